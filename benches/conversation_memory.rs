//! What a conversation's actor holds, measured by a counting allocator
//! inside one process (RSS cannot say it: glibc keeps freed memory and
//! sled caches the pages it wrote). N conversations are made, each
//! activated by one stored message, left to passivate, then activated
//! again; the live heap is read at each step, and sled's share is
//! estimated by the same writes done without any actor.
//!
//! cargo bench --bench conversation_memory      (WARDEN_BENCH_CONVERSATIONS=10000)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use warden_actors::conversation::{ConversationInput, MessageInput};
use warden_domain::Owner;
use warden_storage::{Store, StoreConfig};
use warden_supervisors::{Runtime, RuntimeConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

fn message(text: &str) -> MessageInput {
    MessageInput {
        role: Some("user".into()),
        content: Some(text.into()),
        ..Default::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("WARDEN_BENCH_CONVERSATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    warden::install_tls_provider();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::new(dir.path().to_owned())).unwrap();
    warden_actors::conversation::ensure_indexes(&store)
        .await
        .unwrap();
    let idle = Duration::from_secs(2);
    let runtime = Runtime::start(
        store.clone(),
        RuntimeConfig {
            conversation_idle: Some(idle),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let convs = runtime.conversations.clone();
    let owner = Owner {
        org_id: "bench".into(),
        user_id: "u".into(),
        group_id: String::new(),
    };
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let input = ConversationInput {
            title: Some(format!("bench {i}")),
            ..Default::default()
        };
        ids.push(
            convs
                .create(input, owner.clone(), "u", "bench")
                .await
                .unwrap()
                .id,
        );
    }
    let activate = |round: usize| {
        let (convs, ids) = (convs.clone(), ids.clone());
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            for chunk in ids.chunks(ids.len().div_ceil(64)) {
                let (convs, chunk) = (convs.clone(), chunk.to_vec());
                tasks.spawn(async move {
                    for id in chunk {
                        convs
                            .append(&id, message(&format!("message {round}")), "u")
                            .await
                            .unwrap();
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    };
    let live_actors = || async {
        let tree = runtime.snapshot().await.unwrap();
        tree.children
            .iter()
            .find(|k| k.name == "conversations")
            .map_or(0, |k| k.children.len())
    };
    let base = live_mib();
    println!("{n} conversations stored, none active: live heap {base:.1} MiB");
    activate(1).await;
    let active = live_mib();
    println!(
        "RESULT active actors={} live_heap_mib={active:.1} per_conversation_kib={:.1}",
        live_actors().await,
        (active - base) * 1024.0 / n as f64
    );
    tokio::time::sleep(idle * 3).await;
    let passive = live_mib();
    println!(
        "RESULT passivated actors={} live_heap_mib={passive:.1} per_conversation_kib={:.1}",
        live_actors().await,
        (passive - base) * 1024.0 / n as f64
    );
    activate(2).await;
    let again = live_mib();
    println!(
        "RESULT active_again actors={} live_heap_mib={again:.1}",
        live_actors().await
    );
    tokio::time::sleep(idle * 3).await;
    let passive_again = live_mib();
    println!(
        "RESULT passivated_again actors={} live_heap_mib={passive_again:.1}",
        live_actors().await
    );
    // The actors' share: what activation holds beyond what passivation
    // leaves (the store's caches and the written data stay either way).
    println!(
        "RESULT actor_share per_active_conversation_kib={:.1}",
        (again - passive_again) * 1024.0 / n as f64
    );
    runtime.shutdown().await;
}
