//! `db::quiesce`, which a process calls last: it returns only once no connection is being
//! opened on the pools' threads. Its own test binary, since it parks those threads for good.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tidings_common::db::{Db, quiesce};

/// A server that accepts connections and never answers: a connection attempt to it stays
/// in progress, on a pool thread, until libpq's `connect_timeout`.
fn silent_server() -> (u16, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let held = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut open = Vec::new();
        while Instant::now() < deadline && !stopped.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((socket, _)) => open.push(socket),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            for socket in &mut open {
                let _ = socket.set_nonblocking(true);
                let _ = socket.read(&mut [0; 512]);
            }
        }
    });
    (port, stop, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_waits_for_a_connection_being_opened() {
    let (port, stop, server) = silent_server();
    let db = Db::new(
        &format!("postgres://nobody@127.0.0.1:{port}/none?connect_timeout=2&sslmode=disable"),
        1,
    );
    // Asking for a connection starts one being opened on a pool thread.
    let attempt = tokio::spawn(async move { db.run(|_| Ok(())).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let quiet = tokio::task::spawn_blocking(|| quiesce(Duration::from_secs(10)))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(quiet, "the attempt ended well within the limit");
    // It returned only once the attempt had given up (connect_timeout, about 1.7 s on).
    assert!(
        waited >= Duration::from_millis(1200),
        "returned while a connection was being opened: after {waited:?}"
    );
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    assert!(
        attempt.await.unwrap().is_err(),
        "a silent server gives no connection"
    );
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
}
