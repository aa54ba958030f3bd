//! `ern keygen`: the keys a network needs: pseudonymisation keys, steward signing keys,
//! site identity keys for secure aggregation, and the network's TLS certificates.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use ern_coordinator::pki::NetworkCa;
use ern_node::privacy::secret::NoiseSecret;
use ern_node::secure::{SiteIdentity, SitePublicKey};
use ern_node::{approval, pseudonym, steward_key};

/// Which key to create.
#[derive(Debug, Subcommand)]
pub(crate) enum Keygen {
    /// A site's pseudonymisation key: 32 random bytes as 64 hex characters, mode 0600.
    /// Keep it with the node; without it nobody can link a pid to a patient.
    Pseudonym {
        /// Key file to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// A node's noise secret: 32 random bytes as 64 hex characters, mode 0600, kept beside
    /// the pseudonymisation key and never in the store; node.toml names it as
    /// `[privacy] secret`. It seeds the node's differential-privacy noise so that the same
    /// question on the same data always gets the same answer.
    Noise {
        /// Secret file to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// A data steward's Ed25519 signing key pair: PREFIX.key (PKCS#8, mode 0600) stays
    /// with the steward; PREFIX.pub goes into the node's configuration.
    Steward {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
    /// A site's identity key for secure aggregation: DIR/site.key (Ed25519, PKCS#8 PEM,
    /// mode 0600) stays with the site's node; DIR/site.pub (64 hex characters) goes to
    /// every other site of the network.
    ///
    /// Secure aggregation adds every site's numbers under pairwise masks, so that k applies
    /// to the network total and nobody sees a site's own numbers. Masks protect a site only
    /// if it knows whom it shares them with, so every node's node.toml pins the identity
    /// public keys of the network's sites: the roster, `[secure_aggregation.roster]`, one
    /// line `SITE = "<64 hex>"` per site. A node takes part in a round only with the sites
    /// its own roster lists, and only when each signed with the key listed for it; the
    /// coordinator can neither add nor swap one. The command prints this site's roster
    /// line (give `--site` for it to name the site) for the operators of the other sites;
    /// this node's own node.toml names site.key as `identity_key`. An existing key is
    /// never overwritten.
    Site {
        /// Directory of the two files; created if absent.
        #[arg(long)]
        out: PathBuf,
        /// This site's id, as enrolled at the coordinator, for the printed roster line.
        #[arg(long)]
        site: Option<String>,
    },
    /// The network's TLS certificates: a CA (DIR/ca.pem, DIR/ca.key), the coordinator's
    /// server certificate (DIR/coordinator.pem, .key) and one client certificate per node
    /// (DIR/node-SITE.pem, .key), bound to its site. Run again on the same DIR to add
    /// sites: the existing CA is reused and no file is ever overwritten.
    Tls(TlsArgs),
}

/// Arguments of `ern keygen tls`.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// Directory of the certificates; created if absent.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The network's name, in the CA's subject (new CA only).
    #[arg(long, default_value = "ern")]
    pub(crate) network: String,
    /// A DNS name or IP address clients use to reach the coordinator (repeatable). A new
    /// CA with none given gets a server certificate for localhost and 127.0.0.1.
    #[arg(long = "server-name")]
    pub(crate) server_names: Vec<String>,
    /// A site to issue a node certificate for (repeatable).
    #[arg(long = "site")]
    pub(crate) sites: Vec<String>,
    /// A site whose node certificate to renew (repeatable): a new key and certificate
    /// replace DIR/node-SITE.pem and .key, and the old pair is kept beside them under
    /// its serial, to revoke once the node runs on the new one (`ern operator node
    /// revoke SITE --serial OLD`).
    #[arg(long = "renew")]
    pub(crate) renew: Vec<String>,
}

/// The CA certificate file in a TLS directory.
pub(crate) const CA_CERT: &str = "ca.pem";
/// The CA key file.
pub(crate) const CA_KEY: &str = "ca.key";
/// The coordinator's certificate file.
pub(crate) const SERVER_CERT: &str = "coordinator.pem";
/// The coordinator's key file.
pub(crate) const SERVER_KEY: &str = "coordinator.key";

/// File stem of a node certificate: `node-SITE`, for sites that are safe file names.
pub(crate) fn node_stem(site: &str) -> anyhow::Result<String> {
    let safe = !site.is_empty()
        && !site.starts_with('.')
        && site
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    anyhow::ensure!(
        safe,
        "site {site:?}: certificate files need a site id of letters, digits, '-', '_' and '.'"
    );
    Ok(format!("node-{site}"))
}

/// Creates the network's certificates in `args.out`; returns the files written.
pub(crate) fn generate_tls(args: &TlsArgs) -> anyhow::Result<Vec<PathBuf>> {
    let dir = &args.out;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let mut files: Vec<(PathBuf, String, bool)> = Vec::new();
    let (ca, new_ca) = if ca_cert.exists() || ca_key.exists() {
        let read = |path: &Path| {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
        };
        let ca = NetworkCa::from_pem(&read(&ca_cert)?, &read(&ca_key)?)
            .with_context(|| format!("loading the CA in {}", dir.display()))?;
        (ca, false)
    } else {
        let (ca, issued) = NetworkCa::generate(&args.network)?;
        files.push((ca_cert, issued.cert_pem, false));
        files.push((ca_key, issued.key_pem, true));
        (ca, true)
    };
    let server_names = if args.server_names.is_empty() && new_ca {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        args.server_names.clone()
    };
    if !server_names.is_empty() {
        let issued = ca.issue_server(&server_names)?;
        files.push((dir.join(SERVER_CERT), issued.cert_pem, false));
        files.push((dir.join(SERVER_KEY), issued.key_pem, true));
    }
    anyhow::ensure!(
        args.renew.is_empty() || !new_ca,
        "--renew needs the network's CA in {} (ca.pem, ca.key)",
        dir.display()
    );
    let renewals = args
        .renew
        .iter()
        .map(|site| plan_renewal(&ca, dir, site))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for site in &args.sites {
        let stem = node_stem(site)?;
        let issued = ca.issue_node(site)?;
        files.push((dir.join(format!("{stem}.pem")), issued.cert_pem, false));
        files.push((dir.join(format!("{stem}.key")), issued.key_pem, true));
    }
    // All or nothing: refuse before writing if any file exists.
    if let Some((existing, _, _)) = files.iter().find(|(path, _, _)| path.exists()) {
        anyhow::bail!(
            "{} exists; nothing was written (certificates are never overwritten)",
            existing.display()
        );
    }
    let mut written = Vec::with_capacity(files.len());
    for renewal in renewals {
        written.extend(renewal.apply()?);
    }
    for (path, contents, secret) in files {
        let result = if secret {
            pseudonym::write_secret_file(&path, contents.as_bytes())
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|mut file| std::io::Write::write_all(&mut file, contents.as_bytes()))
        };
        result.with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A node certificate to renew: the site's current pair, the new pair, and where the
/// old one goes.
struct Renewal {
    site: String,
    current: (PathBuf, PathBuf),
    archived: (PathBuf, PathBuf),
    old_serial: String,
    issued: ern_coordinator::pki::IssuedCertificate,
}

/// Issues `site` a new node certificate, to replace the one in `dir` (which must exist);
/// nothing is written yet.
fn plan_renewal(ca: &NetworkCa, dir: &Path, site: &str) -> anyhow::Result<Renewal> {
    let stem = node_stem(site)?;
    let (cert, key) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    let pem = std::fs::read_to_string(&cert).with_context(|| {
        format!(
            "--renew {site}: reading {} (a site without a certificate gets one with --site)",
            cert.display()
        )
    })?;
    anyhow::ensure!(key.exists(), "--renew {site}: {} is missing", key.display());
    let old_serial = ern_coordinator::pki::certificate_serial_pem(&pem)
        .with_context(|| format!("{} is not a certificate", cert.display()))?;
    let archived = (
        dir.join(format!("{stem}.{old_serial}.pem")),
        dir.join(format!("{stem}.{old_serial}.key")),
    );
    anyhow::ensure!(
        !archived.0.exists() && !archived.1.exists(),
        "{} exists; nothing was written",
        archived.0.display()
    );
    Ok(Renewal {
        site: site.to_string(),
        current: (cert, key),
        archived,
        old_serial,
        issued: ca.issue_node(site)?,
    })
}

impl Renewal {
    /// Moves the old pair aside and puts the new one in its place: each new file is
    /// written whole beside its place before the old one moves; returns the files
    /// written.
    fn apply(self) -> anyhow::Result<Vec<PathBuf>> {
        let staged = (
            self.current.0.with_extension("pem.renewing"),
            self.current.1.with_extension("key.renewing"),
        );
        let write_new = |path: &Path, contents: &str, secret: bool| {
            let _ = std::fs::remove_file(path);
            let result = if secret {
                pseudonym::write_secret_file(path, contents.as_bytes())
            } else {
                std::fs::write(path, contents)
            };
            result.with_context(|| format!("writing {}", path.display()))
        };
        write_new(&staged.0, &self.issued.cert_pem, false)?;
        write_new(&staged.1, &self.issued.key_pem, true)?;
        for (from, to) in [
            (&self.current.0, &self.archived.0),
            (&self.current.1, &self.archived.1),
            (&staged.0, &self.current.0),
            (&staged.1, &self.current.1),
        ] {
            std::fs::rename(from, to)
                .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
        let new_serial =
            ern_coordinator::pki::certificate_serial_pem(&self.issued.cert_pem).unwrap_or_default();
        println!(
            "renewed the node certificate of {}: new serial {new_serial}; the old one (serial {}) is kept as {}",
            self.site,
            self.old_serial,
            self.archived.0.display()
        );
        println!(
            "once the node runs on the new one: ern operator node revoke {} --serial {}",
            self.site, self.old_serial
        );
        Ok(vec![self.current.0, self.current.1])
    }
}

/// A site's line in a roster, `SITE = "<hex>"`; the site id is quoted where it is not a
/// bare TOML key (a '.' in it). Without one, the placeholder `<SITE>` is no TOML key, so a
/// line pasted unedited is refused rather than read as a site named "SITE".
fn roster_line(site: Option<&str>, public: &SitePublicKey) -> String {
    let key = match site {
        Some(site)
            if site
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            site.to_string()
        }
        Some(site) => format!("\"{site}\""),
        None => "<SITE>".to_string(),
    };
    format!("{key} = \"{}\"", public.to_hex())
}

pub(crate) fn run(keygen: Keygen) -> anyhow::Result<()> {
    match keygen {
        Keygen::Pseudonym { out } => {
            pseudonym::generate_key_file(&out).context("creating the pseudonymisation key")?;
            println!(
                "wrote pseudonymisation key {} (mode 0600); back it up: a lost key cannot re-link pids",
                out.display()
            );
        }
        Keygen::Noise { out } => {
            NoiseSecret::generate(&out).context("creating the noise secret")?;
            println!(
                "wrote noise secret {} (mode 0600); keep it beside the pseudonymisation key, never in the store, and name it in node.toml as [privacy] secret",
                out.display()
            );
        }
        Keygen::Steward { out } => {
            let public =
                steward_key::generate_steward_key(&out).context("creating the steward key pair")?;
            println!(
                "wrote {0}.key (private, mode 0600) and {0}.pub (public)",
                out.display()
            );
            println!("key id: {}", public.key_id());
        }
        Keygen::Site { out, site } => {
            if let Some(site) = &site {
                anyhow::ensure!(
                    approval::is_valid_id(site),
                    "--site {site:?}: a site id is 1-128 ASCII letters, digits, '-', '_' and '.' (not first)"
                );
            }
            let public = SiteIdentity::generate(&out).context("creating the site identity key")?;
            println!(
                "wrote {} (private, mode 0600: it stays with the node; node.toml names it as identity_key) and {} (public)",
                SiteIdentity::key_path(&out).display(),
                SiteIdentity::public_key_path(&out).display()
            );
            println!("key id: {}", public.key_id());
            println!("public key: {}", public.to_hex());
            println!(
                "Every site's node.toml lists this key under [secure_aggregation.roster]; the line to send the other sites:"
            );
            if site.is_none() {
                println!("(replace <SITE> with this site's id, or run with --site SITE)");
            }
            println!("{}", roster_line(site.as_deref(), &public));
        }
        Keygen::Tls(args) => {
            let written = generate_tls(&args)?;
            for path in &written {
                let kind = if path.extension().is_some_and(|e| e == "key") {
                    "private key, mode 0600: keep it on its machine"
                } else {
                    "certificate"
                };
                println!("wrote {} ({kind})", path.display());
            }
            if written.is_empty() {
                println!("nothing to issue: give --server-name, --site or --renew");
            }
        }
    }
    Ok(())
}
