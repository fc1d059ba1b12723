//! What a node daemon knows about its host: sysinfo for CPU, memory, disks
//! and network; `nvidia-smi` for GPUs when it is installed.

use serde_json::{Value, json};
use sysinfo::{Disks, Networks, System};
use warden_actors::node::protocol::{GpuReport, Registration};

const MIB: u64 = 1024 * 1024;

pub struct Host {
    system: System,
    networks: Option<Networks>,
    started: std::time::Instant,
}

/// GPUs as `nvidia-smi` reports them; empty without it.
pub fn gpus() -> Vec<GpuReport> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total,memory.free,utilization.gpu,temperature.gpu",
            "--format=csv,noheader,nounits",
        ])
        .output();
    let Ok(out) = out else { return Vec::new() };
    if !out.status.success() {
        return Vec::new();
    }
    parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_nvidia_smi(text: &str) -> Vec<GpuReport> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() < 6 {
                return None;
            }
            Some(GpuReport {
                device_id: format!("GPU-{}", f[0]),
                model: f[1].to_owned(),
                memory_total: f[2].parse().ok(),
                memory_free: f[3].parse().ok(),
                memory_used: None,
                utilization: f[4].parse().ok(),
                temperature: f[5].parse().ok(),
            })
        })
        .collect()
}

impl Host {
    pub fn new() -> anyhow::Result<Host> {
        let mut system = System::new().map_err(|e| anyhow::anyhow!("reading the host: {e}"))?;
        system.refresh_memory();
        system.refresh_cpu_all();
        Ok(Host {
            system,
            networks: Networks::new_with_refreshed_list().ok(),
            started: std::time::Instant::now(),
        })
    }

    fn address(&self) -> Option<String> {
        let nets = self.networks.as_ref()?;
        let mut addrs: Vec<std::net::IpAddr> = nets
            .values()
            .flat_map(|n| n.ip_networks().iter().map(|i| i.addr))
            .collect();
        addrs.sort_by_key(|a| (a.is_loopback(), a.is_ipv6()));
        addrs.first().map(ToString::to_string)
    }

    fn disk(&self) -> (u64, u64) {
        let disks = Disks::new_with_refreshed_list().ok();
        disks
            .iter()
            .flat_map(|d| d.iter())
            .fold((0, 0), |(t, a), d| {
                (t + d.total_space() / MIB, a + d.available_space() / MIB)
            })
    }

    pub fn registration(&mut self, node_id: Option<String>) -> Registration {
        self.system.refresh_memory();
        let hostname = System::host_name().ok();
        Registration {
            node_id,
            name: hostname.clone(),
            hostname,
            ip_address: self.address(),
            public_ip_address: None,
            os: Some(json!({
                "platform": std::env::consts::OS,
                "name": System::name().ok(),
                "version": System::os_version().ok(),
                "kernel": System::kernel_version().ok(),
                "arch": System::cpu_arch(),
            })),
            cpu_cores: Some(self.system.cpus().len() as u64),
            cpu_model: self
                .system
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_owned()),
            ram_total: Some(self.system.total_memory() / MIB),
            ram_free: Some(self.system.available_memory() / MIB),
            disk_total: Some(self.disk().0),
            gpu_devices: gpus(),
            daemon_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            uptime_seconds: System::uptime().ok(),
            container_runtime: Some(container_runtime()),
            node_status: Some("ready".into()),
        }
    }

    pub fn heartbeat(&mut self) -> Value {
        self.system.refresh_memory();
        self.system.refresh_cpu_usage();
        let total = self.system.total_memory().max(1);
        let used = total.saturating_sub(self.system.available_memory());
        json!({
            "status": "healthy",
            "uptimeSeconds": self.started.elapsed().as_secs(),
            "cpuUsage": self.system.global_cpu_usage(),
            "ramUsage": used as f64 * 100.0 / total as f64,
            "activeDeployments": 0,
            "gpuStatus": gpus().iter().map(|g| json!({"deviceId": g.device_id, "utilization": g.utilization, "memoryUsed": g.memory_total.zip(g.memory_free).map(|(t, f)| t.saturating_sub(f)), "temperature": g.temperature})).collect::<Vec<_>>(),
        })
    }

    pub fn metrics(&mut self) -> Value {
        self.system.refresh_memory();
        self.system.refresh_cpu_usage();
        let total = self.system.total_memory() / MIB;
        let free = self.system.available_memory() / MIB;
        let (disk_total, disk_free) = self.disk();
        let (rx, tx, rxp, txp) = match self.networks.as_mut() {
            Some(n) => {
                n.refresh(true);
                n.values().fold((0, 0, 0, 0), |(a, b, c, d), x| {
                    (
                        a + x.total_received(),
                        b + x.total_transmitted(),
                        c + x.total_packets_received(),
                        d + x.total_packets_transmitted(),
                    )
                })
            }
            None => (0, 0, 0, 0),
        };
        json!({
            "cpu": {"usage": self.system.global_cpu_usage(), "cores": self.system.cpus().len()},
            "memory": {"total": total, "used": total.saturating_sub(free), "free": free, "usagePercent": if total > 0 { (total - free) as f64 * 100.0 / total as f64 } else { 0.0 }},
            "disk": {"total": disk_total, "used": disk_total.saturating_sub(disk_free), "free": disk_free},
            "gpuDevices": gpus(),
            "network": {"rxBytes": rx, "txBytes": tx, "rxPackets": rxp, "txPackets": txp},
        })
    }
}

fn container_runtime() -> Value {
    for (name, args) in [
        ("docker", ["version", "--format", "{{.Server.Version}}"]),
        ("podman", ["version", "--format", "{{.Version}}"]),
    ] {
        if let Ok(out) = std::process::Command::new(name).args(args).output()
            && out.status.success()
        {
            return json!({"type": name, "version": String::from_utf8_lossy(&out.stdout).trim()});
        }
    }
    json!({"type": "none"})
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_nvidia_smi_csv() {
        let gpus = super::parse_nvidia_smi(
            "0, NVIDIA RTX 4090, 24564, 24000, 3, 41\n1, NVIDIA A100, 81920, 80000, 0, 30\nbad line\n",
        );
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].device_id, "GPU-0");
        assert_eq!(gpus[1].model, "NVIDIA A100");
        assert_eq!(gpus[0].memory_free, Some(24000));
        assert_eq!(gpus[0].temperature, Some(41.0));
    }
}
