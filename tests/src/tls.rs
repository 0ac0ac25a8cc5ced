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

/// A client certificate made by [`ServerTls::client`].
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// The certificate and its private key, in one PEM file.
    pub identity: PathBuf,
    /// The hex SHA-256 of the certificate's DER bytes (its fingerprint).
    pub sha256: String,
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

    /// A client certificate for `name` (common name), signed by this CA,
    /// for mutual TLS: `NAME-identity.pem` holds the certificate and its
    /// key, as HTTP clients take an identity.
    pub fn client(&self, name: &str) -> ClientTls {
        let dir = self.ca.parent().expect("the CA is in a folder");
        let cnf = format!("{name}-client.cnf");
        fs::write(
            dir.join(&cnf),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", dir.display()));
        openssl(
            dir,
            &format!(
                "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key \
                 -out {name}.csr -subj /CN={name}"
            ),
        );
        openssl(
            dir,
            &format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out {name}.pem -days 2 -extfile {cnf}"
            ),
        );
        openssl(
            dir,
            &format!("x509 -in {name}.pem -outform DER -out {name}.der"),
        );
        use sha2::Digest as _;
        let read =
            |f: String| fs::read(dir.join(&f)).unwrap_or_else(|e| panic!("cannot read {f}: {e}"));
        let sha256 = hex::encode(sha2::Sha256::digest(read(format!("{name}.der"))));
        let mut identity = read(format!("{name}.pem"));
        identity.extend(read(format!("{name}.key")));
        let path = dir.join(format!("{name}-identity.pem"));
        fs::write(&path, identity)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        ClientTls {
            identity: path,
            sha256,
        }
    }

    /// The CA certificate's PEM bytes.
    pub fn ca_pem(&self) -> Vec<u8> {
        fs::read(&self.ca).unwrap_or_else(|e| panic!("cannot read {}: {e}", self.ca.display()))
    }
}
