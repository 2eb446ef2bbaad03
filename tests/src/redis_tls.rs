//! A `redis-server` speaking TLS with a password, and certificates made for it by `openssl`: a
//! private CA and a server certificate for `localhost` and `127.0.0.1`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::redis_server::{RedisServer, skip};

/// A TLS Redis of one test's own; stopped, and its certificates removed, when dropped.
#[derive(Debug)]
pub struct TlsRedis {
    server: RedisServer,
    tls_port: u16,
    dir: PathBuf,
}

impl TlsRedis {
    /// Makes a CA and a server certificate, and starts `redis-server` with TLS on a free port
    /// (and plain TCP on another, for the readiness check) requiring `password`.
    pub fn start(password: &str) -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "tollhouse-tls-{}-{}",
            std::process::id(),
            RedisServer::free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        make_certificates(&dir)?;
        let tls_port = RedisServer::free_port()?;
        let path = |name: &str| dir.join(name).display().to_string();
        let extra = [
            "--tls-port".to_owned(),
            tls_port.to_string(),
            "--tls-cert-file".to_owned(),
            path("server.crt"),
            "--tls-key-file".to_owned(),
            path("server.key"),
            "--tls-ca-cert-file".to_owned(),
            path("ca.crt"),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
            "--requirepass".to_owned(),
            password.to_owned(),
        ];
        let server = RedisServer::start_with(RedisServer::free_port()?, extra.to_vec())?;
        Ok(Self {
            server,
            tls_port,
            dir,
        })
    }

    /// `rediss://:password@localhost:PORT/`.
    pub fn url(&self, password: &str) -> String {
        format!("rediss://:{password}@localhost:{}/", self.tls_port)
    }

    /// The CA certificate (PEM) that signed the server's.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The server.
    pub fn server(&mut self) -> &mut RedisServer {
        &mut self.server
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        self.server.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS Redis for `test`, or `None` after a `SKIP:` notice (under `CI=true`, a failure) when
/// `redis-server` or `openssl` is missing.
pub fn tls_redis_for(test: &str, password: &str) -> Option<TlsRedis> {
    match TlsRedis::start(password) {
        Ok(redis) => Some(redis),
        Err(error) => {
            skip(
                test,
                &format!("this test needs redis-server built with TLS and openssl ({error})"),
            );
            None
        }
    }
}

/// `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) -> io::Result<()> {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "openssl {args:?} failed: {status}"
        )))
    }
}

fn make_certificates(dir: &Path) -> io::Result<()> {
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=tollhouse test CA",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )
}
