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
use rustls::ServerConfig;
use serde::Deserialize;
use tokio::sync::Semaphore;

mod tls;

use self::tls::tls_config;
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
