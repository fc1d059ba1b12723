use anyhow::Context;
use clap::Parser;
use serde_json::Value;
use tracing_subscriber::EnvFilter;
use warden::cli::{ActorsArgs, Cli, Command, KeysAction};
use warden::config::FileConfig;

/// mimalloc instead of glibc's malloc: Warden allocates and frees many
/// small objects per request (JSON values, sled's node copies), and with
/// glibc that was ~30% of its CPU, much of it contention on the arena
/// locks; with mimalloc the same runs cost half the CPU (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its first arena eagerly (RSS 78 MiB at idle instead
/// of 40). Its options are read when first used, which happens before
/// `main` (the runtime's own allocations), so this sets it from a
/// constructor that runs ahead of every default-priority one, mimalloc's
/// included. The option's number is its place in mimalloc's `mi_option_t`
/// (the same in its v2 and v3).
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static MIMALLOC_OPTIONS: extern "C" fn() = {
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    extern "C" fn set() {
        // SAFETY: sets one allocator option before any thread exists.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) }
    }
    set
};

fn init_logging(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    return_large_blocks_to_the_os();
    warden::install_tls_provider();
    let cli = Cli::parse();
    let file = FileConfig::load(cli.config.as_deref())?;
    let log = cli
        .log
        .clone()
        .or(file.log.clone())
        .unwrap_or_else(|| "info".into());
    init_logging(&log, cli.log_json || file.log_json.unwrap_or(false));
    // Panics are caught by supervisors; log them as one line, not a backtrace dump.
    std::panic::set_hook(Box::new(
        |info| tracing::error!(panic = %info, "a task panicked"),
    ));
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve(file)?;
            let running = warden::server::start(config).await?;
            if let Some((user, password)) = &running.generated_admin {
                eprintln!(
                    "warden: created the first admin '{user}' with password '{password}' (shown once; set WARDEN_ADMIN_PASSWORD to choose it)"
                );
            }
            println!("warden listening on http://{}", running.addr);
            running.run_until(warden::server::shutdown_signal()).await
        }
        Command::Actors(args) => print_actors(args).await,
        Command::Keys { action } => keys(action).await,
        Command::Node(args) => {
            let config = warden::node::DaemonConfig {
                server: args.server,
                token: args.token,
                node_id: args.node_id,
                data_dir: args.data_dir,
                models_dir: args.models_dir,
                hub_url: args.hub_url,
                runtimes: args.runtimes,
                advertise_host: args.advertise_host,
                ort_library: args.ort_library,
            };
            warden::node::run(config, warden::server::shutdown_signal()).await
        }
        Command::ServeModel(args) => {
            let listen = std::net::SocketAddr::new(args.host, args.port);
            warden::serve_model::run(
                &args.model,
                listen,
                args.ort_library,
                warden::server::shutdown_signal(),
            )
            .await
        }
    }
}

/// One call to a running server's admin API; its JSON, or why not.
async fn admin_call(
    server: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<Value> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("requesting {url}"))?;
    let status = response.status();
    let body: Value = response.json().await.context("reading the answer")?;
    if !status.is_success() {
        anyhow::bail!(
            "{url} answered {status}: {}",
            body["message"].as_str().unwrap_or("")
        );
    }
    Ok(body)
}

/// `warden keys list|rotate`: the signing keys of a running server.
async fn keys(action: KeysAction) -> anyhow::Result<()> {
    let (args, method, path) = match action {
        KeysAction::List(a) => (a, reqwest::Method::GET, "/admin/keys"),
        KeysAction::Rotate(a) => (a, reqwest::Method::POST, "/admin/keys/rotate"),
    };
    let keys = match admin_call(&args.server, &args.token, method, path).await? {
        Value::Array(keys) => keys,
        key => vec![key],
    };
    for k in keys {
        println!(
            "{}  created {}{}{}",
            k["kid"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("(legacy jwt.key)"),
            k["createdAt"].as_str().unwrap_or("-"),
            if k["current"] == true {
                "  signing"
            } else {
                ""
            },
            k["retiresAt"]
                .as_str()
                .map(|t| format!("  retires {t}"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

async fn print_actors(args: ActorsArgs) -> anyhow::Result<()> {
    let body = admin_call(
        &args.server,
        &args.token,
        reqwest::Method::GET,
        "/admin/actors",
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        let mut out = String::new();
        warden::cli::render_tree(&body, 0, &mut out);
        print!("{out}");
    }
    Ok(())
}

/// The C libraries Warden loads (ONNX Runtime, SQLite) allocate with
/// glibc's malloc, which raises its mmap threshold after the first large
/// block is freed, so later ones come from the heap and stay resident
/// once freed. A fixed threshold keeps blocks of 4 MiB and more in their
/// own mappings, returned to the OS on free.
fn return_large_blocks_to_the_os() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
