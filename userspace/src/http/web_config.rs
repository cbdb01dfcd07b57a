//! `--web.config.file`: TLS, basic auth and response headers, in the file
//! format of Prometheus' exporter-toolkit (node_exporter, ebpf_exporter and
//! `promtool check web-config` read the same file).
//!
//! Loading checks everything a scrape would otherwise trip over later: the
//! files are read, the key must match the certificate, every password must
//! be a bcrypt hash, and a field fuselock does not know — or knows but cannot
//! honour — is an error rather than silently ignored. Relative paths are
//! taken from the config file's directory, as the toolkit does.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use axum::http::{HeaderName, HeaderValue};
use rustls::{
    crypto::{ring as provider, CryptoProvider, SupportedKxGroup},
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    version, NamedGroup, RootCertStore, ServerConfig, SupportedCipherSuite,
    SupportedProtocolVersion,
};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::stamp::{stamps, Stamp};

/// A web config that cannot be used, and why (one line).
#[derive(Debug, thiserror::Error)]
#[error("--web.config.file {}: {reason}", path.display())]
pub struct WebConfigError {
    pub path: PathBuf,
    pub reason: String,
}

/// The file as written. Field names are the toolkit's; anything else is an
/// error (`deny_unknown_fields`), as in the toolkit's strict YAML parsing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
    /// Known to newer toolkits; refused with a reason rather than ignored.
    rate_limit: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    /// fuselock serves HTTP/1.1 only (ALPN offers nothing else), so this has
    /// no effect either way; accepted because the toolkit's files carry it.
    #[allow(dead_code)]
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// Headers the toolkit lets a web config set, with their allowed values
/// (`None`: any value). Kept identical so one file works for every exporter.
const HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

/// A loaded, checked web config.
pub struct WebConfig {
    /// Where it came from, and every file it names: a change to any of them
    /// is a reason to load it again.
    pub files: Vec<PathBuf>,
    /// The files as they were when read.
    pub stamps: Vec<Stamp>,
    pub tls: Option<Arc<ServerConfig>>,
    /// Clients must present a certificate the configured CA signed.
    pub client_cert_required: bool,
    pub auth: Option<BasicAuth>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Why the file last failed to load again, if it did: then every
    /// request is refused (503) until it loads, rather than served under a
    /// config the file no longer says (a user removed from it, say).
    pub failed: Option<String>,
}

/// The files of a web config, kept open from their first read. fuselock
/// reads them first as root, before it drops to a user that may not open
/// them (`sudo fuselock export` with root-only files); a file changed in
/// place is read again through the descriptor kept. A file replaced by
/// another (renamed over it, as editors and certificate tools do) is
/// opened anew, which may then fail.
#[derive(Default)]
pub struct KeptFiles {
    files: Mutex<HashMap<PathBuf, fs::File>>,
}

impl KeptFiles {
    /// The whole of `path`: through the descriptor kept while `path` still
    /// names that file, else from a new one, kept from then on.
    pub fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let mut kept = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if let (Ok(now), Some(file)) = (fs::metadata(path), kept.get(path)) {
            let held = file.metadata()?;
            if (held.dev(), held.ino()) == (now.dev(), now.ino()) {
                return read_from_start(file);
            }
        }
        let file = fs::File::open(path)?;
        let bytes = read_from_start(&file)?;
        kept.insert(path.to_owned(), file);
        Ok(bytes)
    }
}

/// All of `file`, from offset 0 whatever its position (pread).
fn read_from_start(file: &fs::File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        match file.read_at(&mut chunk, bytes.len() as u64) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where a load reads its files, and the files it read.
struct Sources<'a> {
    kept: &'a KeptFiles,
    files: Vec<PathBuf>,
}

impl WebConfig {
    /// No TLS, no auth, no headers: what running without the flag means.
    pub fn plain() -> WebConfig {
        WebConfig {
            files: Vec::new(),
            stamps: Vec::new(),
            tls: None,
            client_cert_required: false,
            auth: None,
            headers: Vec::new(),
            failed: None,
        }
    }

    /// What is served once `last`'s file failed to load again: `last`'s
    /// TLS (a handshake still completes, so scrapers see why), its files
    /// (still watched, for the fix), and a refusal of every request.
    pub fn failed(last: &WebConfig, why: String) -> WebConfig {
        WebConfig {
            files: last.files.clone(),
            stamps: last.stamps.clone(),
            tls: last.tls.clone(),
            client_cert_required: last.client_cert_required,
            auth: None,
            headers: last.headers.clone(),
            failed: Some(why),
        }
    }

    /// Reads and checks `path` and the files it names, keeping nothing open.
    #[cfg(test)]
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        WebConfig::load_kept(path, &KeptFiles::default())
    }

    /// [`WebConfig::load`], reading through `kept` and keeping the files
    /// open there.
    pub fn load_kept(path: &Path, kept: &KeptFiles) -> Result<WebConfig, WebConfigError> {
        let fail = |reason: String| WebConfigError {
            path: path.to_owned(),
            reason,
        };
        let text = kept
            .read(path)
            .map_err(|e| fail(format!("cannot read it: {e}")))
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| fail("cannot read it: not UTF-8".into()))
            })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_saphyr::from_str(&text).map_err(|e| fail(yaml_error(&e)))?
        };
        let mut files = Sources {
            kept,
            files: vec![path.to_owned()],
        };
        if file.rate_limit.is_some() {
            return Err(fail(
                "rate_limit is not supported by fuselock (its server already caps connections and request time)".into(),
            ));
        }
        let (tls, client_cert_required) = match &file.tls_server_config {
            Some(t) => {
                let (config, required) = tls_config(t, dir, &mut files).map_err(fail)?;
                (Some(config), required)
            }
            None => (None, false),
        };
        let headers = headers(file.http_server_config.as_ref()).map_err(fail)?;
        let auth = match file.basic_auth_users {
            Some(users) if !users.is_empty() => Some(BasicAuth::new(users).map_err(fail)?),
            _ => None,
        };
        let files = files.files;
        Ok(WebConfig {
            stamps: stamps(&files),
            files,
            tls,
            client_cert_required,
            auth,
            headers,
            failed: None,
        })
    }

    /// Anyone who can connect can read the metrics.
    pub fn open_to_anyone(&self) -> bool {
        self.auth.is_none() && !self.client_cert_required
    }
}

/// serde-saphyr's message without its source snippet: one line, with the
/// position it names.
fn yaml_error(e: &serde_saphyr::Error) -> String {
    let plain = e.without_snippet().to_string();
    plain.lines().next().unwrap_or("not valid YAML").to_owned()
}

fn read(dir: &Path, file: &Path, field: &str, files: &mut Sources) -> Result<Vec<u8>, String> {
    let path = dir.join(file);
    let bytes = files
        .kept
        .read(&path)
        .map_err(|e| format!("{field} {}: {e}", path.display()))?;
    files.files.push(path);
    Ok(bytes)
}

/// The PEM of `inline` or `file` (exactly one of them).
fn pem(
    inline: Option<&String>,
    file: Option<&PathBuf>,
    name: &str,
    dir: &Path,
    files: &mut Sources,
) -> Result<Option<(Vec<u8>, String)>, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(format!("give {name} or {name}_file, not both")),
        (Some(text), None) => Ok(Some((text.as_bytes().to_vec(), name.to_owned()))),
        (None, Some(path)) => {
            let field = format!("{name}_file");
            let bytes = read(dir, path, &field, files)?;
            Ok(Some((
                bytes,
                format!("{field} {}", dir.join(path).display()),
            )))
        }
        (None, None) => Ok(None),
    }
}

fn certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no PEM certificate in it"));
    }
    Ok(certs)
}

fn tls_version(name: &str, field: &str) -> Result<u8, String> {
    match name {
        "TLS10" => Ok(0),
        "TLS11" => Ok(1),
        "TLS12" => Ok(2),
        "TLS13" => Ok(3),
        _ => Err(format!(
            "{field}: unknown TLS version {name:?} (TLS10, TLS11, TLS12 or TLS13)"
        )),
    }
}

/// Go's names for the TLS 1.3 suites: Go does not let them be configured
/// and ignores them in `cipher_suites`; so does fuselock.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

fn cipher_suites(
    names: &[String],
    available: &[SupportedCipherSuite],
) -> Result<Vec<SupportedCipherSuite>, String> {
    let tls12: Vec<_> = available
        .iter()
        .filter(|s| s.version() == &version::TLS12)
        .copied()
        .collect();
    let mut chosen = Vec::new();
    for name in names {
        if TLS13_SUITES.contains(&name.as_str()) {
            continue;
        }
        let Some(suite) = tls12
            .iter()
            .find(|s| s.suite().as_str() == Some(name.as_str()))
        else {
            let known: Vec<_> = tls12.iter().filter_map(|s| s.suite().as_str()).collect();
            return Err(format!(
                "cipher_suites: {name} is not one fuselock offers ({})",
                known.join(", ")
            ));
        };
        chosen.push(*suite);
    }
    // The TLS 1.3 suites stay: like Go, the list only restricts TLS 1.2.
    chosen.extend(
        available
            .iter()
            .filter(|s| s.version() == &version::TLS13)
            .copied(),
    );
    Ok(chosen)
}

fn curves(
    names: &[String],
    available: &[&'static dyn SupportedKxGroup],
) -> Result<Vec<&'static dyn SupportedKxGroup>, String> {
    names
        .iter()
        .map(|name| {
            let group = match name.as_str() {
                "X25519" => NamedGroup::X25519,
                "CurveP256" => NamedGroup::secp256r1,
                "CurveP384" => NamedGroup::secp384r1,
                "CurveP521" => {
                    return Err("curve_preferences: CurveP521 is not supported by fuselock (X25519, CurveP256, CurveP384)".to_owned())
                }
                _ => {
                    return Err(format!(
                        "curve_preferences: unknown curve {name:?} (X25519, CurveP256, CurveP384)"
                    ))
                }
            };
            available
                .iter()
                .find(|g| g.name() == group)
                .copied()
                .ok_or_else(|| format!("curve_preferences: {name} is not available"))
        })
        .collect()
}

/// The rustls server config, and whether it requires client certificates.
fn tls_config(
    t: &TlsFile,
    dir: &Path,
    files: &mut Sources,
) -> Result<(Arc<ServerConfig>, bool), String> {
    let Some((cert_pem, cert_what)) =
        pem(t.cert.as_ref(), t.cert_file.as_ref(), "cert", dir, files)?
    else {
        return Err("tls_server_config: missing one of cert or cert_file".into());
    };
    let Some((key_pem, key_what)) = pem(t.key.as_ref(), t.key_file.as_ref(), "key", dir, files)?
    else {
        return Err("tls_server_config: missing one of key or key_file".into());
    };
    let chain = certificates(&cert_pem, &cert_what)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{key_what}: not a PEM private key: {e}"))?;

    let mut crypto: CryptoProvider = provider::default_provider();
    if let Some(names) = &t.cipher_suites {
        crypto.cipher_suites = cipher_suites(names, &crypto.cipher_suites)?;
    }
    if let Some(names) = &t.curve_preferences {
        crypto.kx_groups = curves(names, &crypto.kx_groups)?;
    }
    let crypto = Arc::new(crypto);

    let min = tls_version(t.min_version.as_deref().unwrap_or("TLS12"), "min_version")?;
    let max = tls_version(t.max_version.as_deref().unwrap_or("TLS13"), "max_version")?;
    // rustls speaks TLS 1.2 and 1.3 only: an older minimum just means the
    // old versions are refused anyway, an older maximum cannot be served.
    let versions: Vec<&'static SupportedProtocolVersion> =
        [(2, &version::TLS12), (3, &version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, v)| v)
            .collect();
    if versions.is_empty() {
        return Err(
            "min_version/max_version leave no version fuselock serves (TLS12 and TLS13 only)"
                .into(),
        );
    }

    let client_ca = pem(
        t.client_ca.as_ref(),
        t.client_ca_file.as_ref(),
        "client_ca",
        dir,
        files,
    )?;
    let auth_type = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let (verify, required) = match auth_type {
        "NoClientCert" => (false, false),
        "VerifyClientCertIfGiven" => (true, false),
        "RequireAndVerifyClientCert" => (true, true),
        "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => {
            return Err(format!(
                "client_auth_type {auth_type} accepts certificates nobody verified, which fuselock does not support: use RequireAndVerifyClientCert with client_ca_file"
            ))
        }
        other => {
            return Err(format!(
                "client_auth_type: unknown value {other:?} (NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
            ))
        }
    };
    if t.client_allowed_sans.is_some() {
        return Err("client_allowed_sans is not supported by fuselock: trust only the CA that signs your scrapers' certificates".into());
    }
    let builder = ServerConfig::builder_with_provider(crypto.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match (verify, client_ca) {
        (false, Some(_)) => return Err(
            "client CA given but client_auth_type is NoClientCert: set RequireAndVerifyClientCert"
                .into(),
        ),
        (false, None) => builder.with_no_client_auth(),
        (true, None) => {
            return Err(format!(
                "client_auth_type {auth_type} needs client_ca_file (or client_ca)"
            ))
        }
        (true, Some((pem, what))) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(&pem, &what)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{what}: not a usable CA certificate: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto);
            let verifier = if required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| format!("{what}: {e}"))?)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{key_what} does not match the certificate in {cert_what}")
        }
        e => format!("{cert_what} and {key_what}: {e}"),
    })?;
    // Only HTTP/1.1 is served; say so, so HTTP/2 clients fall back at once.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    Ok((Arc::new(config), required))
}

fn headers(http: Option<&HttpFile>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let Some(set) = http.and_then(|h| h.headers.as_ref()) else {
        return Ok(Vec::new());
    };
    set.iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| {
            let Some((_, allowed)) = HEADERS.iter().find(|(n, _)| n == name) else {
                let names: Vec<_> = HEADERS.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "http_server_config.headers: {name} cannot be set ({})",
                    names.join(", ")
                ));
            };
            if let Some(allowed) = allowed {
                if !allowed.contains(&value.as_str()) {
                    return Err(format!(
                        "http_server_config.headers: {name} must be one of {allowed:?}, not {value:?}"
                    ));
                }
            }
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| format!("http_server_config.headers: {name}: {e}"))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| format!("http_server_config.headers: {name}: {e}"))?;
            Ok((name, value))
        })
        .collect()
}

/// `basic_auth_users`, checked the way the toolkit does: bcrypt only, one
/// comparison at a time (each costs tens of milliseconds of CPU), and a
/// cache of the credentials already verified, so a scraper pays it once
/// per config rather than once per scrape.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// A hash no password is known for, checked for unknown users so that
    /// the time taken does not tell which users exist.
    decoy: String,
    /// (user, SHA-256 of the password) pairs that matched. Only successes:
    /// they are bounded by the users, and guesses cannot evict them.
    verified: Mutex<HashSet<(String, [u8; 32])>>,
    bcrypt: Semaphore,
}

impl BasicAuth {
    fn new(users: BTreeMap<String, String>) -> Result<BasicAuth, String> {
        let mut cost = 10;
        for (user, hash) in &users {
            let parts: bcrypt::HashParts = hash.parse().map_err(|_| {
                format!(
                    "basic_auth_users: the password of {user:?} is not a bcrypt hash (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
                )
            })?;
            cost = parts.get_cost();
        }
        let decoy = bcrypt::hash(b"fuselock: no such user", cost)
            .map_err(|e| format!("basic_auth_users: {e}"))?;
        Ok(BasicAuth {
            users,
            decoy,
            verified: Mutex::new(HashSet::new()),
            bcrypt: Semaphore::new(1),
        })
    }

    fn digest(password: &[u8]) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, password);
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        out
    }

    fn cached(&self, key: &(String, [u8; 32])) -> bool {
        self.verified.lock().is_ok_and(|v| v.contains(key))
    }

    /// Whether `user`/`password` are allowed in.
    pub async fn check(&self, user: &str, password: &[u8]) -> bool {
        let key = (user.to_owned(), Self::digest(password));
        if self.cached(&key) {
            return true;
        }
        let Ok(_turn) = self.bcrypt.acquire().await else {
            return false;
        };
        // Another request may have verified the same pair while we waited.
        if self.cached(&key) {
            return true;
        }
        let (known, hash) = match self.users.get(user) {
            Some(hash) => (true, hash.clone()),
            None => (false, self.decoy.clone()),
        };
        let password = password.to_vec();
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        let ok = known && matched;
        if ok {
            if let Ok(mut v) = self.verified.lock() {
                v.insert(key);
            }
        }
        ok
    }
}

#[cfg(test)]
pub(crate) mod tests;
