//! pingora as a plain reverse proxy: no keys, no routes, no metrics, no
//! header rewriting — only `upstream_peer`. The load benchmark
//! (`benches/load/run.sh`) runs it beside scopegate so that the cost of key
//! enforcement can be read as the difference between the two, apart from
//! what pingora itself costs per request.
//!
//! ```sh
//! cargo run --release --example plain_pingora -- 127.0.0.1:8081 127.0.0.1:9000
//! ```
//! (listen address, then upstream address). Runs on one thread, with the
//! same runtime and upstream peer options scopegate uses.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Plain {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("usage: plain_pingora LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let upstream: SocketAddr = match upstream.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("plain_pingora: bad upstream address {upstream}: {e}");
            std::process::exit(2);
        }
    };
    // The same peer options scopegate sets for an upstream.
    let mut peer = HttpPeer::new(upstream, false, String::new());
    peer.options.connection_timeout = Some(Duration::from_secs(2));
    peer.options.total_connection_timeout = Some(Duration::from_secs(4));
    peer.options.read_timeout = Some(Duration::from_secs(60));
    peer.options.write_timeout = Some(Duration::from_secs(60));
    peer.options.idle_timeout = Some(Duration::from_secs(60));

    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Plain { peer });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
