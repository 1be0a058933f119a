//! A TCP proxy that delays every byte by a fixed time in each direction, so a local endpoint
//! answers like a remote one (20 ms each way = 40 ms more per round trip). Async (tokio), so it
//! carries the dozens of concurrent connections of many receive loops without becoming the
//! limit itself: data is forwarded as soon as its delay has passed, however much is in flight,
//! and in order.

use anyhow::{Context, Result};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Listens on 127.0.0.1:`port` (0: any free port), prints the port, and forwards every
/// connection to 127.0.0.1:`target_port` until killed.
pub async fn serve(target_port: u16, port: u16, delay: Duration) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    println!("{}", listener.local_addr()?.port());
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            tokio::join!(pipe(cr, uw, delay), pipe(ur, cw, delay));
        });
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; closes `to` after the last.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let deliver = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    tokio::join!(read, deliver);
}
