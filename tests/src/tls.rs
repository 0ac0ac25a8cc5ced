//! A test certificate authority and a server certificate for 127.0.0.1,
//! made with the real `openssl`: for servers under test that speak TLS.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{require_tool, run_ok};

/// A CA (`ca.pem`) and a server certificate signed by it for the IP address
/// 127.0.0.1 (`server.pem`, key `server.key`), in one folder.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The CA certificate (PEM): the one root a client should trust.
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM, unencrypted).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &str) {
    require_tool("openssl", "`apt-get install openssl`");
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(args.split_whitespace()),
    );
}

impl ServerTls {
    /// Makes the CA and the server certificate (P-256, valid two days) in
    /// `dir`, which is created.
    pub fn make(dir: &Path) -> ServerTls {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        fs::write(
            dir.join("server.cnf"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", dir.display()));
        openssl(
            dir,
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
             -out ca.pem -days 2 -subj /CN=cbfs-test-ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign",
        );
        openssl(
            dir,
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
             -out server.csr -subj /CN=127.0.0.1",
        );
        openssl(
            dir,
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -out server.pem -days 2 -extfile server.cnf",
        );
        ServerTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    /// The CA certificate's PEM bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        fs::read(&self.ca).unwrap_or_else(|e| panic!("cannot read {}: {e}", self.ca.display()))
    }
}
