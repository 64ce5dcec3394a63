//! Integration tests of kiln-fetch against real peers on 127.0.0.1 (the Range-capable
//! `tools/peers/http_range_server.py`, TLS with a throwaway CA, a forward proxy), all
//! started and stopped by the tests themselves.

mod cache;
mod checksums;
mod common;
mod concurrency;
mod errors;
mod proxy;
mod resume;
