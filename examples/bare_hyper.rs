//! The physical limit of a Rust HTTP answer on this machine, for `bench/hit_path.sh`: a bare
//! hyper server that answers every request with the same bytes — status, headers and body
//! captured once from a URL (ghgate's cache hit), so both send exactly the same answer.
//!
//! Nothing else happens per request: no routing, no look-up, no header copying beyond the
//! `HeaderMap` clone any server pays. One current-thread runtime per core, each with its own
//! `SO_REUSEPORT` listener (the kernel spreads connections), is the fastest shape we know for
//! this; ghgate's workers are one accept loop handing connections to per-core runtimes.
//!
//! Usage: `bare_hyper --port 18183 --capture http://127.0.0.1:18080/repos/octo/hello
//!         [--header "authorization: token x"]`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// The answer to serve, as `url` gives it.
async fn capture(url: &str, header: Option<&str>) -> (StatusCode, HeaderMap, Bytes) {
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let mut request = client.get(url);
    if let Some((name, value)) = header.and_then(|h| h.split_once(':')) {
        request = request.header(name.trim(), value.trim());
    }
    let response = request.send().await.expect("capture URL answers");
    let status = response.status();
    let mut headers = response.headers().clone();
    // hyper writes its own framing headers.
    for name in ["content-length", "transfer-encoding", "connection", "date"] {
        headers.remove(HeaderName::from_static(name));
    }
    let body = response.bytes().await.expect("capture body");
    (status, headers, body)
}

fn main() {
    let port: u16 = arg("--port").and_then(|p| p.parse().ok()).unwrap_or(18183);
    let url = arg("--capture").expect("--capture URL");
    let header = arg("--header");
    let setup = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (status, headers, body) = setup.block_on(capture(&url, header.as_deref()));
    drop(setup);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (headers, body) = (headers.clone(), body.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(serve(addr, status, headers, body));
            })
        })
        .collect();
    eprintln!("bare_hyper: {threads} threads on {addr}, {} body bytes", body.len());
    for handle in handles {
        let _ = handle.join();
    }
}

async fn serve(addr: SocketAddr, status: StatusCode, headers: HeaderMap, body: Bytes) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseport(true).unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(1024).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let (headers, body) = (headers.clone(), body.clone());
        tokio::spawn(async move {
            let service = service_fn(move |_request| {
                let mut response = Response::new(Full::new(body.clone()));
                *response.status_mut() = status;
                *response.headers_mut() = headers.clone();
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
