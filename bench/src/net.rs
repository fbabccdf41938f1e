//! Opening loopback TCP connections from chosen source addresses, the same
//! way for every target.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

/// Connections per source address the scenarios aim for at most: each
/// source address has about 28,000 ephemeral ports toward one server port,
/// and a scenario that closes and reopens every connection holds up to
/// twice its count (the closed ones linger in `TIME_WAIT`).
pub const PER_SOURCE: usize = 5_000;

/// Opens a TCP connection to `peer` (`TCP_NODELAY` on), from `source` if
/// given. A bound source socket sets `SO_REUSEADDR` so ports still in
/// `TIME_WAIT` from an earlier round can be reused.
pub async fn connect(peer: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let tcp = match source {
        None => TcpStream::connect(peer).await?,
        Some(ip) => {
            let sock = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.set_reuseaddr(true)?;
            // Leave the port to connect(), which only needs the 4-tuple to
            // be unique (and reuses TIME_WAIT ports on loopback): a bind to
            // port 0 scans the whole ephemeral range itself, synchronously,
            // and with tens of thousands of recent connections that took
            // milliseconds per socket and blocked the runtime's threads.
            #[cfg(target_os = "linux")]
            if ip.is_ipv4() {
                nix::sys::socket::setsockopt(
                    &sock,
                    nix::sys::socket::sockopt::IpBindAddressNoPort,
                    &true,
                )
                .map_err(io::Error::from)?;
            }
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(peer).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The source addresses for `n` connections: `given` if not empty, else
/// none (the kernel's choice) up to [`PER_SOURCE`] connections, else
/// enough of 127.0.0.2, 127.0.0.3, … (all of 127.0.0.0/8 is loopback on
/// Linux) for at most [`PER_SOURCE`] each.
pub fn sources_for(n: usize, given: &[IpAddr]) -> Vec<IpAddr> {
    if !given.is_empty() {
        return given.to_vec();
    }
    if n <= PER_SOURCE {
        return Vec::new();
    }
    let count = n.div_ceil(PER_SOURCE).min(250);
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
        .collect()
}

/// The source address of connection `i`, round-robin over `sources`.
pub fn source_of(sources: &[IpAddr], i: usize) -> Option<IpAddr> {
    (!sources.is_empty()).then(|| sources[i % sources.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_spread_large_counts() {
        assert!(sources_for(5_000, &[]).is_empty());
        let s = sources_for(10_000, &[]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        let given = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        assert_eq!(sources_for(50_000, &given), given.to_vec());
        assert_eq!(source_of(&[], 3), None);
        assert_eq!(source_of(&s, 3), Some(s[1]));
    }

    #[tokio::test]
    async fn connects_from_a_second_loopback_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = listener.local_addr().unwrap();
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let (conn, accepted) = tokio::join!(connect(peer, Some(source)), listener.accept());
        assert_eq!(conn.unwrap().local_addr().unwrap().ip(), source);
        assert_eq!(accepted.unwrap().1.ip(), source);
    }
}
