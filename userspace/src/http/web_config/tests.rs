use std::io::Write as _;

use super::*;

/// A CA, a server certificate for localhost/127.0.0.1 it signed, and a
/// client certificate it signed; plus an unrelated key. Made fresh for
/// each test run: no private key is committed.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let dir = std::env::temp_dir().join(format!("fuselock-web-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "fuselock test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(names).expect("params");
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) =
            leaf(vec!["scraper".into()], ExtendedKeyUsagePurpose::ClientAuth);
        let other_key = KeyPair::generate().expect("key").serialize_pem();
        for (file, text) in [
            ("ca.crt", ca_cert.pem()),
            ("server.crt", server),
            ("server.key", server_key),
            ("client.crt", client),
            ("client.key", client_key),
            ("other.key", other_key),
        ] {
            fs::write(dir.join(file), text).expect("write PEM");
        }
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Writes `yaml` as `name` beside the PEM files.
    pub fn config(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.dir.join(name);
        let mut f = fs::File::create(&path).expect("create config");
        f.write_all(yaml.as_bytes()).expect("write config");
        path
    }
}

/// Writes a config meant to be good and checks that Prometheus' own
/// checker accepts it too (when promtool is installed).
pub fn checked(pki: &Pki, name: &str, yaml: &str) -> PathBuf {
    let path = pki.config(name, yaml);
    match promtool_accepts(&path) {
        Some(r) => r.unwrap_or_else(|e| panic!("promtool rejects {name}: {e}")),
        None => eprintln!("SKIPPED promtool check of {name}: promtool missing"),
    }
    path
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `promtool check web-config` on `path`: whether Prometheus' own
/// checker accepts it (None when promtool is missing).
pub fn promtool_accepts(path: &Path) -> Option<Result<(), String>> {
    let out = std::process::Command::new("promtool")
        .args(["check", "web-config"])
        .arg(path)
        .output()
        .ok()?;
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

pub const PASSWORD: &str = "correct horse";

/// A bcrypt hash of [`PASSWORD`] at the lowest cost (tests pay it often).
pub fn hash() -> String {
    bcrypt::hash(PASSWORD, 4).expect("bcrypt")
}

pub const GOOD: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

#[test]
fn a_full_config_loads_and_promtool_agrees() {
    let pki = Pki::new("full");
    let path = pki.config(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS12\n  max_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384]\n  curve_preferences: [X25519, CurveP256]\n  prefer_server_cipher_suites: true\nhttp_server_config:\n  http2: false\n  headers:\n    X-Content-Type-Options: nosniff\n    X-Frame-Options: deny\nbasic_auth_users:\n  prometheus: {}\n",
            hash()
        ),
    );
    let config = WebConfig::load(&path).expect("loads");
    assert!(config.tls.is_some());
    assert!(config.client_cert_required);
    assert!(config.auth.is_some());
    assert_eq!(config.headers.len(), 2);
    assert!(!config.open_to_anyone());
    assert_eq!(
        config.files,
        vec![
            path.clone(),
            pki.path("server.crt"),
            pki.path("server.key"),
            pki.path("ca.crt")
        ]
    );
    match promtool_accepts(&path) {
        Some(r) => r.expect("promtool check web-config"),
        None => eprintln!("SKIPPED promtool: not installed"),
    }
}

/// Each way a config can be wrong: one line naming the problem. The
/// lines are printed so the test log shows exactly what a user sees.
#[test]
fn bad_configs_are_refused_with_one_line() {
    let pki = Pki::new("bad");
    let cases: &[(&str, String, &str)] = &[
        (
            "missing cert",
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n".into(),
            "cert_file ",
        ),
        (
            "unreadable key",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: .\n".into(),
            "key_file ",
        ),
        (
            "key of another certificate",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n".into(),
            "does not match the certificate",
        ),
        (
            "unknown field",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_files: ca.crt\n".into(),
            "unknown field `client_ca_files`",
        ),
        (
            "unknown top-level field",
            "tls_config:\n  cert_file: server.crt\n".into(),
            "unknown field `tls_config`",
        ),
        (
            "plain-text password",
            "basic_auth_users:\n  prometheus: hunter2\n".into(),
            "is not a bcrypt hash",
        ),
        (
            "cert is not PEM",
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n".into(),
            "no PEM certificate",
        ),
        (
            "client CA without client auth",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_ca_file: ca.crt\n".into(),
            "client CA given",
        ),
        (
            "client auth without CA",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n".into(),
            "needs client_ca_file",
        ),
        (
            "unverified client certificates",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAnyClientCert\n".into(),
            "RequireAnyClientCert",
        ),
        (
            "header that cannot be set",
            "http_server_config:\n  headers:\n    Server: fuselock\n".into(),
            "Server cannot be set",
        ),
        (
            "TLS too old to serve",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  max_version: TLS11\n".into(),
            "TLS12 and TLS13 only",
        ),
        ("not YAML", "tls_server_config: [\n".into(), "line"),
    ];
    for (what, yaml, needle) in cases {
        let path = pki.config("bad.yml", yaml);
        let err = match WebConfig::load(&path) {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => e.to_string(),
        };
        println!("{what}: {err}");
        assert!(err.contains(needle), "{what}: {err}");
        assert!(!err.contains('\n'), "{what}: more than one line: {err}");
        assert!(err.starts_with("--web.config.file "), "{what}: {err}");
    }
    let missing = pki.path("absent.yml");
    let err = WebConfig::load(&missing).err().expect("missing file");
    println!("missing config: {err}");
    assert!(err.to_string().contains("cannot read it"));
}

#[test]
fn an_empty_file_means_plain_http() {
    let pki = Pki::new("empty");
    let config = WebConfig::load(&checked(&pki, "web.yml", "")).expect("loads");
    assert!(config.tls.is_none() && config.auth.is_none());
    assert!(config.open_to_anyone());
}

#[tokio::test]
async fn passwords_are_checked_against_the_hash() {
    let mut users = BTreeMap::new();
    users.insert("prometheus".to_owned(), hash());
    let auth = Arc::new(BasicAuth::new(users).expect("auth"));
    assert!(auth.check("prometheus", PASSWORD.as_bytes()).await);
    // Now from the cache.
    assert!(auth.check("prometheus", PASSWORD.as_bytes()).await);
    assert!(!auth.check("prometheus", b"wrong").await);
    assert!(!auth.check("nobody", PASSWORD.as_bytes()).await);
    assert_eq!(auth.verified.lock().expect("lock").len(), 1);
}

/// Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the calling thread
/// alone (capabilities are per thread), as a root fuselock has lost them
/// once it has dropped its privileges.
fn without_dac_override_in_this_thread() {
    let mut sets = [0u32; 6];
    let mut header = [0x2008_0522u32, 0];
    // SAFETY: capget/capset(2) on this thread with a v3 header and room
    // for two data structs (effective, permitted, inheritable each).
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, header.as_mut_ptr(), sets.as_mut_ptr()),
            0
        );
        for i in [0, 1] {
            sets[i] &= !((1 << 1) | (1 << 2)); // CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        }
        assert_eq!(
            libc::syscall(libc::SYS_capset, header.as_mut_ptr(), sets.as_ptr()),
            0
        );
    }
}

/// `sudo fuselock export` with a root-only web config: after the drop it
/// cannot open the file, but reads a change made in place through the
/// descriptor kept from the first load; a file renamed over it is opened
/// anew, and one it may not open is an error (which fails closed).
#[test]
fn a_file_it_may_no_longer_open_is_read_through_the_descriptor_kept() {
    use std::os::unix::fs::PermissionsExt as _;
    let pki = Pki::new("kept");
    let path = pki.config("web.yml", "");
    let kept = KeptFiles::default();
    assert_eq!(kept.read(&path).expect("first read"), b"");
    std::thread::scope(|s| {
        s.spawn(|| {
            without_dac_override_in_this_thread();
            // Write-only: it may be changed, not read.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o200)).expect("chmod");
            assert!(
                fs::File::open(&path).is_err(),
                "the file is still open to us"
            );
            // Changed in place (truncated and written: the same inode).
            fs::write(&path, "http_server_config:\n  http2: false\n").expect("write in place");
            assert_eq!(
                kept.read(&path).expect("read through the kept descriptor"),
                b"http_server_config:\n  http2: false\n"
            );
            // Replaced by a file it may open.
            let new = pki.config("web.yml.new", "basic_auth_users: {}\n");
            fs::rename(&new, &path).expect("rename");
            assert_eq!(
                kept.read(&path).expect("reopened"),
                b"basic_auth_users: {}\n"
            );
            // Replaced by one it may not.
            let new = pki.config("web.yml.new", "");
            fs::set_permissions(&new, fs::Permissions::from_mode(0o000)).expect("chmod");
            fs::rename(&new, &path).expect("rename");
            let err = kept.read(&path).expect_err("a file it may not open");
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        });
    });
}
