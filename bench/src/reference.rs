//! The "HTTP ceiling" for benchmarks: bare actix-web answering every request with
//! the same 100-byte body, on as many workers as cores, with no logging, store or
//! middleware. `bench/compare.sh` sets kvstore-server's figures against it.
//!
//! ```sh
//! cargo run --release -p kvstore-bench --bin reference -- 127.0.0.1:5100
//! REFERENCE_LISTEN=127.0.0.1:0 cargo run --release -p kvstore-bench --bin reference
//! ```
//!
//! The address is the first argument, else `REFERENCE_LISTEN`, else
//! `127.0.0.1:5100`; port 0 picks a free one. Once bound it prints
//! `reference listening on http://ADDRESS` on stdout. Any method, any path.

use std::net::TcpListener;

use actix_web::{web, App, HttpResponse, HttpServer};

/// The body of every answer: 100 bytes, the size of a typical small value.
const BODY: &[u8; 100] = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqr";

/// Reads the request body (an unread body costs actix-web the connection's
/// keep-alive, which would make PUTs look slow) and answers [`BODY`].
async fn constant(_body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(&BODY[..])
}

fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("REFERENCE_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:5100".to_string());
    let listener = TcpListener::bind(&address)?;
    let local = listener.local_addr()?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(|| App::new().default_service(web::to(constant)))
            .workers(workers)
            .listen(listener)?
            .run();
        println!("reference listening on http://{local}");
        server.await
    })
}
