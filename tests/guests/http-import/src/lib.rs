//! Imports `wasi:http`, which kiln does not provide: it must be refused at link time
//! (and by `kiln validate`) with a message that no grant would help.
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {}

kiln_guest::provisioner!(
    fn provision(_cfg: Config) -> kiln_guest::Result<String> {
        let req = wasi::http::types::OutgoingRequest::new(wasi::http::types::Fields::new());
        match wasi::http::outgoing_handler::handle(req, None) {
            Ok(_) => Ok("ESCAPED: sent an HTTP request".into()),
            Err(e) => kiln_guest::bail!("http: {e:?}"),
        }
    }
);
