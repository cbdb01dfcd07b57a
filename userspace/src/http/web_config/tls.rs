//! The `tls_server_config` section: certificate and key, versions, cipher
//! suites, curves and client certificates, checked as a scrape would use them.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    crypto::{ring as provider, CryptoProvider, SupportedKxGroup},
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    version, NamedGroup, RootCertStore, ServerConfig, SupportedCipherSuite,
    SupportedProtocolVersion,
};

use super::{read, Sources, TlsFile};

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
pub(super) fn tls_config(
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
