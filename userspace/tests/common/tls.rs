//! A self-signed certificate for `localhost`, for the host tests of the
//! exporter's web config (included with `#[path]`: the VM tests do not
//! need it).

use std::path::Path;

/// Writes a fresh self-signed certificate for `localhost` and its key into
/// `dir` as `cert` and `key`.
pub fn write_self_signed(dir: &Path, cert: &str, key: &str) {
    let key_pair = rcgen::KeyPair::generate().expect("key");
    let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key_pair)
        .expect("cert");
    std::fs::write(dir.join(cert), certificate.pem()).expect("write the certificate");
    std::fs::write(dir.join(key), key_pair.serialize_pem()).expect("write the key");
}
