//! Loopback networking helpers: free ports, readiness polling, an HTTP client.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::thread;
use std::time::{Duration, Instant};

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// The port is found by binding port 0 and closing the socket again, so
/// another process may take it before the caller does; the servers started
/// by this crate retry with a new port when that happens.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("cannot bind a TCP port on 127.0.0.1: {e}"));
    listener
        .local_addr()
        .expect("a bound socket has a local address")
        .port()
}

/// A port `p` on 127.0.0.1 such that `p` and `p + 1` were both free a
/// moment ago (OpenBao's dev server puts its cluster listener on `p + 1`).
pub(crate) fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind a TCP port on 127.0.0.1: {e}"));
        let port = first.local_addr().expect("bound socket").port();
        if port == u16::MAX {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("cannot find two adjacent free TCP ports on 127.0.0.1")
}

/// The socket address `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A blocking HTTP client for talking to the servers under test: no proxy
/// (whatever `HTTP_PROXY` says), a 30 s request timeout, no retries.
pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| panic!("cannot build an HTTP client: {e}"))
}

/// Polls `url` with GET until it answers with any HTTP status, and returns
/// that status. Fails the test if nothing answers within `timeout`.
pub fn wait_for_http(url: &str, timeout: Duration) -> u16 {
    let client = http_client();
    match poll_http(&client, url, timeout, || Ok(())) {
        Ok(status) => status,
        Err(e) => panic!("{e}"),
    }
}

/// Polls `url` until it answers with any HTTP status. Between attempts,
/// `still_alive` may report that the server has died, which ends the wait.
pub(crate) fn poll_http(
    client: &reqwest::blocking::Client,
    url: &str,
    timeout: Duration,
    mut still_alive: impl FnMut() -> Result<(), String>,
) -> Result<u16, String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        let last_error = match client.get(url).timeout(Duration::from_secs(5)).send() {
            Ok(response) => return Ok(response.status().as_u16()),
            Err(e) => e.to_string(),
        };
        still_alive()?;
        if Instant::now() >= deadline {
            return Err(format!(
                "{url} did not answer within {timeout:?} (last error: {last_error})"
            ));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(loopback(port)).expect("free port can be bound");
    }

    #[test]
    fn free_port_pair_is_bindable() {
        let port = free_port_pair();
        let _a = TcpListener::bind(loopback(port)).expect("first port");
        let _b = TcpListener::bind(loopback(port + 1)).expect("second port");
    }

    #[test]
    #[should_panic(expected = "did not answer within")]
    fn wait_for_http_gives_up() {
        let port = free_port();
        wait_for_http(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_millis(300),
        );
    }
}
