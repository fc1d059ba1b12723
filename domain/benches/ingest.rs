//! CSV ingest + per-column statistics in one pass (what a dataset upload
//! does after streaming the file to its blob), beside
//! `../shared/bench/training`'s polars and pandas figures for the same
//! 1M-row file.
//!
//!   cargo bench -p warden-domain --bench ingest [-- CSV]
//!
//! CSV defaults to ~/.cache/warden-bench/training/data/sensors_1m.csv.

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec the call fills.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let home = std::env::var("HOME").unwrap_or_default();
    let path = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .unwrap_or(format!(
            "{home}/.cache/warden-bench/training/data/sensors_1m.csv"
        ));
    let Ok(meta) = std::fs::metadata(&path) else {
        eprintln!("{path} is missing: run ../shared/bench/training/run first");
        std::process::exit(2);
    };
    for run in 1..=3 {
        let (c0, t0) = (cpu_seconds(), std::time::Instant::now());
        let file = std::fs::File::open(&path).expect("the file opens");
        let p =
            warden_domain::dataset::profile(std::io::BufReader::with_capacity(256 * 1024, file))
                .expect("a CSV");
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        println!(
            "run {run}: {} rows, {} columns, {:.1} MB: {wall:.3} s wall, {cpu:.3} CPU-s (polars 0.30 s, pandas 0.53 s on this machine)",
            p.rows,
            p.columns.len(),
            meta.len() as f64 / 1e6
        );
    }
}
