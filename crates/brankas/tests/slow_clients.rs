//! Slow clients cannot starve the server (issue 13, finding 7): thousands of connections that
//! send nothing, or send headers and stall their body, while others still get `/health`, a
//! token and their records, each within a second.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Instance, Server, patient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Raises this process's open-files limit (the attack needs thousands of sockets).
fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        let target = want.min(r.rlim_max);
        if r.rlim_cur < target {
            r.rlim_cur = target;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        }
        assert!(r.rlim_cur >= want, "the test needs {want} open files (ulimit -n)");
    }
}

fn server_addr(s: &Server) -> SocketAddr {
    s.root.trim_start_matches("http://").parse().unwrap()
}

/// A connection from `from` (any 127.x.y.z is loopback on Linux).
async fn connect(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    s.connect(to).await
}

/// `n` connections spread over source addresses `127.<net>.x.y`, `per` per address, each
/// having sent `prefix` (possibly nothing).
async fn open_many(to: SocketAddr, net: u8, n: usize, per: usize, prefix: &'static [u8]) -> Vec<TcpStream> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let a = i / per;
        let from = Ipv4Addr::new(127, net, (a / 250) as u8, (a % 250) as u8 + 2);
        tasks.spawn(async move {
            let mut s = connect(from, to).await.ok()?;
            if !prefix.is_empty() {
                s.write_all(prefix).await.ok()?;
            }
            Some(s)
        });
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Some(s) = r.unwrap() {
            out.push(s);
        }
    }
    out
}

/// Connections (of `socks`) the server has closed within `wait`.
async fn closed_within(socks: Vec<TcpStream>, wait: Duration) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for mut s in socks {
        tasks.spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                match tokio::time::timeout(wait, s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => continue,
                    Err(_) => return false,
                }
            }
        });
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        n += r.unwrap() as usize;
    }
    n
}

const STALLED_TOKEN: &[u8] = b"POST /auth/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant_type=";

/// A client on a fresh connection from `from`, which must answer within a second.
fn fresh_client(from: Ipv4Addr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().local_address(IpAddr::V4(from)).timeout(Duration::from_secs(1)).pool_max_idle_per_host(0).build().unwrap()
}

#[test]
fn stalled_connections_do_not_starve_health_token_or_reads() {
    raise_fd_limit(8192);
    let inst = Instance::init();
    let mut srv = inst.serve_with(&["--insecure-http", "--max-connections", "1024"]);
    srv.token = srv.new_token();
    let pid = srv.create(&patient("3171054708900003", "Lestari"))["id"].as_str().unwrap().to_string();
    let to = server_addr(&srv);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // 2,000 connections that sent a token request's headers and stall its body, and 1,100
    // that send nothing, from 80 addresses (40 each: within the per-address limit, so it is
    // the global cap of 1,024 they overflow).
    let t0 = Instant::now();
    let (stalled, silent) = rt.block_on(async {
        let stalled = open_many(to, 1, 2000, 40, STALLED_TOKEN).await;
        let silent = open_many(to, 2, 1100, 40, b"").await;
        (stalled, silent)
    });
    eprintln!("opened {} stalled and {} silent connections in {:?}", stalled.len(), silent.len(), t0.elapsed());

    // Fresh connections from another address are served, each within a second (once the
    // server has drained its accept queue of the burst).
    std::thread::sleep(Duration::from_millis(500));
    for (i, from) in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)].into_iter().enumerate() {
        let c = fresh_client(from);
        let t = Instant::now();
        let r = c.get(format!("{}/health", srv.root)).send().unwrap_or_else(|e| panic!("/health starved ({i}): {e}"));
        assert_eq!(r.status(), 200);
        let r = c
            .post(format!("{}/auth/token", srv.root))
            .basic_auth(&srv.client_id, Some(&srv.client_secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .unwrap_or_else(|e| panic!("/auth/token starved ({i}): {e}"));
        assert_eq!(r.status(), 200);
        let token = r.json::<serde_json::Value>().unwrap()["access_token"].as_str().unwrap().to_string();
        let r = c.get(srv.url(&format!("Patient/{pid}"))).bearer_auth(&token).send().unwrap_or_else(|e| panic!("read starved ({i}): {e}"));
        assert_eq!(r.status(), 200);
        assert!(t.elapsed() < Duration::from_secs(3), "three requests took {:?}", t.elapsed());
    }

    // The server holds at most its cap of the 3,100 (the rest were shed, or never left the
    // kernel's accept queue).
    let held = sockets_of(srv.child.id());
    assert!(held <= 1024 + 16, "the server holds {held} sockets");
    drop((stalled, silent));
}

/// Sockets open in process `pid` (Linux).
fn sockets_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()).filter(|l| l.to_string_lossy().starts_with("socket:")).count()
}

#[test]
fn one_address_holds_at_most_its_share() {
    raise_fd_limit(2048);
    let inst = Instance::init();
    let srv = inst.serve();
    let to = server_addr(&srv);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let socks = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..200 {
            v.push(connect(Ipv4Addr::new(127, 0, 0, 9), to).await.unwrap());
        }
        v
    });
    let closed = rt.block_on(closed_within(socks, Duration::from_millis(1500)));
    assert_eq!(closed, 200 - 64, "the default limit is 64 connections per address");
    // The address is not locked out: its newest connections are served.
    let r = fresh_client(Ipv4Addr::new(127, 0, 0, 9)).get(format!("{}/health", srv.root)).send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_silent_connection_is_closed_within_the_header_timeout() {
    let inst = Instance::init();
    let srv = inst.serve_with(&["--insecure-http", "--header-timeout", "2"]);
    let to = server_addr(&srv);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let t = Instant::now();
        let mut s = connect(Ipv4Addr::LOCALHOST, to).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("a silent connection must be closed").unwrap_or(0);
        assert_eq!(n, 0);
        assert!(t.elapsed() < Duration::from_secs(4), "closed after {:?}", t.elapsed());
        // The same after a completed request: an idle keep-alive connection is closed too.
        let mut s = connect(Ipv4Addr::LOCALHOST, to).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let t = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("an idle connection must be closed") {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
        assert!(t.elapsed() < Duration::from_secs(4), "closed after {:?}", t.elapsed());
    });
}

#[test]
fn a_stalled_body_gets_408_but_a_slow_streaming_upload_finishes() {
    let inst = Instance::init();
    let mut srv = inst.serve_with(&["--insecure-http", "--body-timeout", "2"]);
    srv.token = srv.new_token();
    let pid = srv.create(&patient("3171054708900003", "Lestari"))["id"].as_str().unwrap().to_string();
    let to = server_addr(&srv);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let token = srv.token.clone();
    rt.block_on(async {
        // An unauthenticated token request whose body never finishes.
        let mut s = connect(Ipv4Addr::LOCALHOST, to).await.unwrap();
        s.write_all(STALLED_TOKEN).await.unwrap();
        let t = Instant::now();
        let got = read_to_close(&mut s).await;
        assert!(got.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&got));
        assert!(t.elapsed() < Duration::from_secs(5), "answered after {:?}", t.elapsed());

        // An authenticated FHIR create trickled in: 408 too.
        let body = serde_json::to_vec(&patient("3273014708900007", "Santoso")).unwrap();
        let mut s = connect(Ipv4Addr::LOCALHOST, to).await.unwrap();
        let head = format!("POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).await.unwrap();
        for b in body.chunks(20).take(4) {
            s.write_all(b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        let got = read_to_close(&mut s).await;
        assert!(got.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&got));

        // A raw Binary upload at the same pace streams and is stored (idle limit 60 s).
        let content = [b'x'; 100];
        let mut s = connect(Ipv4Addr::LOCALHOST, to).await.unwrap();
        let head = format!(
            "POST /fhir/Binary HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/pdf\r\nX-Security-Context: Patient/{pid}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            content.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        for b in content.chunks(20) {
            s.write_all(b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        let got = read_to_close(&mut s).await;
        assert!(got.starts_with(b"HTTP/1.1 201"), "{}", String::from_utf8_lossy(&got));
    });
}

async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await.expect("the server must answer and close") {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}
