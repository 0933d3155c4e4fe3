//! TLS: the `--ssl-*` settings turned into the rustls server configuration every worker serves with.
//!
//! The master loads and checks everything here before it forks (at start, and again on each
//! `SIGHUP`): the certificate chain, the private key (decrypted with `--ssl-keyfile-password` when
//! it is an encrypted PKCS#8 key), that the two match, and the client-certificate CAs. Workers
//! inherit the parsed configuration, so a key file only root can read keeps working in workers that
//! run as another user, and a bad file is an error naming it before any worker exists: exit 2 at
//! start, a rejected reload (the current workers and their certificate keep serving) on `SIGHUP`.
//!
//! TLS is global: with `--ssl-certfile`, every listener serves HTTPS with the one certificate, as in
//! uvicorn and gunicorn. ALPN offers `h2` and `http/1.1`. Session tickets are made with a key drawn
//! in the master, so a client resumes its session on any worker of the same generation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use x509_cert::der::Decode;

use super::kinds::{Kind, wrong_type};
use super::settings::Settings;

/// The ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Which client certificates the server asks for (`--ssl-cert-reqs`, uvicorn's numbers: Python's
/// `ssl.CERT_NONE`, `CERT_OPTIONAL`, `CERT_REQUIRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// 0: none asked for.
    #[default]
    None,
    /// 1: asked for; a client may send none, one it sends must verify.
    Optional,
    /// 2: required and verified.
    Required,
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientAuth::None => "0 (none)",
            ClientAuth::Optional => "1 (optional)",
            ClientAuth::Required => "2 (required)",
        })
    }
}

/// `--ssl-cert-reqs`: `0`, `1` or `2` as uvicorn takes it, or `none`, `optional`, `required`; TOML
/// also takes the integer.
pub(crate) struct CertReqs;

impl Kind for CertReqs {
    type Value = ClientAuth;
    const EXPECTED: &'static str = "0 (none), 1 (optional) or 2 (required)";
    fn parse(text: &str) -> Result<ClientAuth, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "0" | "none" | "cert_none" => Ok(ClientAuth::None),
            "1" | "optional" | "cert_optional" => Ok(ClientAuth::Optional),
            "2" | "required" | "cert_required" => Ok(ClientAuth::Required),
            _ => Err(format!("expected {}, got {text:?}", Self::EXPECTED)),
        }
    }
    fn from_toml(value: &toml::Value) -> Result<ClientAuth, String> {
        match value {
            toml::Value::String(s) => Self::parse(s),
            toml::Value::Integer(n) => Self::parse(&n.to_string()),
            other => Err(wrong_type(other, Self::EXPECTED)),
        }
    }
    fn show(value: &ClientAuth) -> serde_json::Value {
        let n: u64 = match value {
            ClientAuth::None => 0,
            ClientAuth::Optional => 1,
            ClientAuth::Required => 2,
        };
        serde_json::Value::Number(n.into())
    }
}

/// A password: shown as `***` by `Debug`, so no settings dump or log line prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A secret text (`--ssl-keyfile-password`).
pub(crate) struct Secret;

impl Kind for Secret {
    type Value = Password;
    const EXPECTED: &'static str = "a password";
    fn parse(text: &str) -> Result<Password, String> {
        Ok(Password(text.to_string()))
    }
    /// Never the password itself.
    fn show(_: &Password) -> serde_json::Value {
        serde_json::Value::String("***".to_string())
    }
}

/// A TLS setting that cannot be used, naming the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file that cannot be read or does not hold what it should.
    #[error("{setting} {}: {message}", path.display())]
    File {
        /// The setting that names the file, e.g. `--ssl-keyfile`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, and what was expected.
        message: String,
    },
    /// Settings that do not hold together.
    #[error("{0}")]
    Settings(String),
}

fn file_error(setting: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        setting,
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The TLS configuration the workers serve with, loaded and checked in the master.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ServerConfig>,
    /// The certificate as the log shows it: file, subject, serial, validity.
    summary: String,
    /// What to warn about (an expired certificate, a password for a key that needs none).
    warnings: Vec<String>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary)
    }
}

impl Tls {
    /// The TLS configuration the settings ask for; `None` without `--ssl-certfile`.
    pub fn load(settings: &Settings) -> Result<Option<Tls>, TlsError> {
        let Some(certfile) = &settings.ssl_certfile else {
            let stray = [
                ("--ssl-keyfile", settings.ssl_keyfile.is_some()),
                (
                    "--ssl-keyfile-password",
                    settings.ssl_keyfile_password.is_some(),
                ),
                ("--ssl-ca-certs", settings.ssl_ca_certs.is_some()),
                (
                    "--ssl-cert-reqs",
                    settings.ssl_cert_reqs != ClientAuth::None,
                ),
            ];
            return match stray.iter().find(|(_, set)| *set) {
                Some((name, _)) => Err(TlsError::Settings(format!(
                    "{name} needs --ssl-certfile: TLS is on only with a certificate"
                ))),
                None => Ok(None),
            };
        };
        let mut warnings = Vec::new();
        let chain = read_chain(certfile)?;
        let (key_setting, keyfile) = match &settings.ssl_keyfile {
            Some(k) => ("--ssl-keyfile", k.as_path()),
            None => ("--ssl-certfile", certfile.as_path()),
        };
        let key = read_key(
            key_setting,
            keyfile,
            settings.ssl_keyfile_password.as_ref(),
            &mut warnings,
        )?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(format!("TLS: {e}")))?;
        let builder = match (settings.ssl_cert_reqs, &settings.ssl_ca_certs) {
            (ClientAuth::None, ca) => {
                if let Some(ca) = ca {
                    warnings.push(format!(
                        "--ssl-ca-certs {} has no effect with --ssl-cert-reqs 0: no client \
                         certificate is asked for",
                        ca.display()
                    ));
                }
                builder.with_no_client_auth()
            }
            (reqs, None) => {
                return Err(TlsError::Settings(format!(
                    "--ssl-cert-reqs {reqs} needs --ssl-ca-certs: the CA certificates that client \
                     certificates are checked against"
                )));
            }
            (reqs, Some(ca)) => {
                let roots = read_roots(ca)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                let verifier = if reqs == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| file_error("--ssl-ca-certs", ca, format!("{e:?}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let leaf = chain[0].clone();
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => file_error(
                key_setting,
                keyfile,
                format!(
                    "the private key does not match the certificate in {}",
                    certfile.display()
                ),
            ),
            other => file_error(
                key_setting,
                keyfile,
                format!("unusable private key: {other}"),
            ),
        })?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Drawn here, before the fork: every worker of this generation shares the ticket key.
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::Settings(format!("TLS session tickets: {e}")))?;
        let summary = describe(certfile, &leaf, &mut warnings)?;
        Ok(Some(Tls {
            config: Arc::new(config),
            summary,
            warnings,
        }))
    }

    /// The rustls configuration to accept connections with.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The certificate as the log shows it: its file, subject, serial and validity.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// What the master should warn about once logging is up.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Reads a file for `setting`, naming both when it cannot.
fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| file_error(setting, path, format!("cannot read it: {e}")))
}

/// The PEM certificates of `--ssl-certfile`, leaf first; each must parse as X.509.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const SETTING: &str = "--ssl-certfile";
    let bytes = read(SETTING, path)?;
    let chain = certificates(SETTING, path, &bytes)?;
    if chain.is_empty() {
        return Err(file_error(
            SETTING,
            path,
            "no certificate in it: expected PEM blocks `-----BEGIN CERTIFICATE-----`, the \
             server's certificate first, then its intermediates",
        ));
    }
    Ok(chain)
}

/// The PEM certificates in `bytes`, each checked to be an X.509 certificate.
fn certificates(
    setting: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(setting, path, format!("not valid PEM: {e}")))?;
    for (i, cert) in chain.iter().enumerate() {
        x509_cert::Certificate::from_der(cert).map_err(|e| {
            file_error(
                setting,
                path,
                format!(
                    "certificate {} is not a valid X.509 certificate: {e}",
                    i + 1
                ),
            )
        })?;
    }
    Ok(chain)
}

/// The CA certificates of `--ssl-ca-certs`.
fn read_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    const SETTING: &str = "--ssl-ca-certs";
    let bytes = read(SETTING, path)?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certificates(SETTING, path, &bytes)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            file_error(
                SETTING,
                path,
                format!("certificate {} cannot be a trust anchor: {e}", i + 1),
            )
        })?;
    }
    if roots.is_empty() {
        return Err(file_error(
            SETTING,
            path,
            "no certificate in it: expected PEM blocks `-----BEGIN CERTIFICATE-----`",
        ));
    }
    Ok(Arc::new(roots))
}

/// The private key in `path` (PKCS#8, PKCS#1 RSA or SEC1 EC, PEM), decrypted with `password` when
/// it is an encrypted PKCS#8 key.
fn read_key(
    setting: &'static str,
    path: &Path,
    password: Option<&Password>,
    warnings: &mut Vec<String>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(setting, path)?;
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(file_error(
            setting,
            path,
            "the key is encrypted in OpenSSL's legacy PEM format, which hyperfork cannot read; \
             convert it to encrypted PKCS#8 (`openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out \
             NEW`) or decrypt it (`openssl pkey -in KEY -out NEW`)",
        ));
    }
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let Some(Password(password)) = password else {
            return Err(file_error(
                setting,
                path,
                "the key is encrypted: give its password with --ssl-keyfile-password (or \
                 HYPERFORK_SSL_KEYFILE_PASSWORD), or decrypt it (`openssl pkey -in KEY -out NEW`)",
            ));
        };
        return decrypt(setting, path, &text, password);
    }
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let why = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key in it: expected a PEM block `-----BEGIN PRIVATE KEY-----`, `RSA \
                 PRIVATE KEY` or `EC PRIVATE KEY`"
                    .to_string()
            }
            other => format!("not a valid PEM private key: {other}"),
        };
        file_error(setting, path, why)
    })?;
    if password.is_some() {
        warnings.push(format!(
            "--ssl-keyfile-password is set but the key in {} is not encrypted; the password is \
             not used",
            path.display()
        ));
    }
    Ok(key)
}

/// Decrypts the `ENCRYPTED PRIVATE KEY` block of `text` (PKCS#8, PBES2).
fn decrypt(
    setting: &'static str,
    path: &Path,
    text: &str,
    password: &str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let start = text
        .find("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        .unwrap_or(0);
    let block = match text[start..].find("-----END ENCRYPTED PRIVATE KEY-----") {
        Some(end) => &text[start..start + end + "-----END ENCRYPTED PRIVATE KEY-----".len()],
        None => &text[start..],
    };
    let (_, der) = pkcs8::der::pem::decode_vec(block.as_bytes())
        .map_err(|e| file_error(setting, path, format!("not a valid encrypted key: {e}")))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
        .map_err(|e| file_error(setting, path, format!("not a valid encrypted key: {e}")))?;
    let plain = info.decrypt(password).map_err(|e| {
        use pkcs8::pkcs5::Error as Pkcs5;
        let why = match e {
            // A wrong password shows as a padding error after AES-CBC (pkcs5 reports it as either
            // failure), or, rarely, as garbage that is not DER.
            pkcs8::Error::EncryptedPrivateKey(Pkcs5::DecryptFailed | Pkcs5::EncryptFailed)
            | pkcs8::Error::Asn1(_) => {
                "cannot decrypt the key: wrong --ssl-keyfile-password".to_string()
            }
            other => format!(
                "cannot decrypt the key ({other}): hyperfork reads PBES2 keys (PBKDF2 or scrypt \
                 with AES-CBC, what `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes); decrypt it \
                 with `openssl pkey -in KEY -out NEW` or re-encrypt it that way"
            ),
        };
        file_error(setting, path, why)
    })?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        plain.as_bytes().to_vec(),
    )))
}

/// The log's description of the leaf certificate (its serial in colon-separated hex); warns when it
/// is not valid now.
fn describe(
    path: &Path,
    leaf: &CertificateDer<'_>,
    warnings: &mut Vec<String>,
) -> Result<String, TlsError> {
    let cert = x509_cert::Certificate::from_der(leaf).map_err(|e| {
        file_error(
            "--ssl-certfile",
            path,
            format!("not a valid X.509 certificate: {e}"),
        )
    })?;
    let tbs = &cert.tbs_certificate;
    let serial = tbs
        .serial_number
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let not_before = tbs.validity.not_before.to_system_time();
    let not_after = tbs.validity.not_after.to_system_time();
    let stamp = |t| humantime::format_rfc3339_seconds(t).to_string();
    let now = std::time::SystemTime::now();
    if now > not_after {
        warnings.push(format!(
            "the certificate in {} expired on {}: clients will refuse it",
            path.display(),
            stamp(not_after)
        ));
    } else if now < not_before {
        warnings.push(format!(
            "the certificate in {} is valid only from {}: clients will refuse it until then",
            path.display(),
            stamp(not_before)
        ));
    }
    Ok(format!(
        "{} (subject {}, serial {serial}, valid until {})",
        path.display(),
        tbs.subject,
        stamp(not_after)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_reqs_takes_uvicorns_numbers_and_names() {
        assert_eq!(CertReqs::parse("0"), Ok(ClientAuth::None));
        assert_eq!(CertReqs::parse(" 1 "), Ok(ClientAuth::Optional));
        assert_eq!(CertReqs::parse("REQUIRED"), Ok(ClientAuth::Required));
        assert_eq!(
            CertReqs::from_toml(&toml::Value::Integer(2)),
            Ok(ClientAuth::Required)
        );
        assert!(
            CertReqs::parse("3")
                .unwrap_err()
                .contains("expected 0 (none)")
        );
    }

    #[test]
    fn a_password_never_shows_in_debug_output() {
        let p = Secret::parse("hunter2").unwrap();
        assert_eq!(format!("{p:?}"), "\"***\"");
        assert!(!format!("{:?}", Some(p)).contains("hunter2"));
    }
}
