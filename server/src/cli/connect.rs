//! The flags every client command has (`--url`, `--token`, `--user`, the
//! output format) and the connection they make.
//!
//! Without `--token`, a token is minted here, for each connection attempt,
//! with just the capabilities the command needs: signed with
//! `--jwt-secret` when one is configured, else with the development key
//! that `plexus serve` keeps in the data directory (the same logic as
//! `plexus token`). A client never creates the development key: a key it
//! made up would not be the hub's.

use std::time::Duration;

use plexus_client::Client;
use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern};
use plexus_server::auth::devkey::DEV_KEY_FILE;
use plexus_server::auth::{HmacAlg, KeySource, MintRequest, mint_hs};
use plexus_server::config::Config;

use super::error::CliError;
use super::output::{Format, OutputArgs};

/// The hub's WebSocket endpoint unless `--url` or `PLEXUS_URL` says
/// otherwise (the hub's default `--listen`).
pub(crate) const DEFAULT_URL: &str = "ws://127.0.0.1:7700/v1/ws";

/// The `sub` claim of a minted token unless `--user` says otherwise.
pub(crate) const DEFAULT_USER: &str = "plexus-cli";

/// Lifetime of a minted token. A fresh one is minted for every connection
/// attempt and every in-band refresh, so long-running commands (`sub`,
/// `rpc serve`) outlive it.
pub(crate) const MINTED_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Where to connect and as whom.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnArgs {
    /// The hub's WebSocket URL.
    #[arg(long, env = "PLEXUS_URL", default_value = DEFAULT_URL)]
    pub(crate) url: String,
    /// The token to authenticate with. Without it, one is minted with just
    /// the capabilities this command needs, from --jwt-secret or the
    /// development key in --data-dir.
    #[arg(long, env = "PLEXUS_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The user (`sub` claim) of a minted token.
    #[arg(long, default_value = DEFAULT_USER)]
    pub(crate) user: String,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

impl ConnArgs {
    /// The output format these flags select.
    pub(crate) fn format(&self) -> Format {
        self.output.format()
    }
}

/// The capabilities a command needs, for a minted token.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grants {
    /// Patterns to subscribe to (and read history and presence of).
    pub(crate) subscribe: Vec<String>,
    /// Topics to publish on.
    pub(crate) publish: Vec<String>,
    /// `presence.set`.
    pub(crate) presence: bool,
    /// Spaces to pull from.
    pub(crate) sync_read: Vec<String>,
    /// Spaces to push to.
    pub(crate) sync_write: Vec<String>,
    /// Procedures to register.
    pub(crate) rpc_register: Vec<String>,
    /// Procedures to call.
    pub(crate) rpc_call: Vec<String>,
    /// `rpc.list`.
    pub(crate) rpc_admin: bool,
}

/// Keeps the patterns that parse: a topic the hub will refuse anyway is
/// better refused by the hub, with its own error code, than by the minter.
fn valid(patterns: Vec<String>) -> Vec<String> {
    patterns
        .into_iter()
        .filter(|p| Pattern::parse(p, MAX_TOPIC_LEN).is_ok())
        .collect()
}

/// A key to mint tokens with, and what they grant.
#[derive(Debug, Clone)]
struct Minter {
    secret: Vec<u8>,
    alg: HmacAlg,
    request: MintRequest,
}

impl Minter {
    fn mint(&self) -> Result<String, plexus_server::auth::MintError> {
        mint_hs(&self.secret, self.alg, &self.request)
    }
}

/// Finds the key to mint with, or says why there is none.
fn minter(config: &Config, user: &str, grants: Grants) -> Result<Minter, CliError> {
    let no_key_configured = config.jwt_secret.is_empty()
        && config.jwt_public_key.as_os_str().is_empty()
        && config.jwks_url.is_empty();
    let dev_key = config.data_dir.join(DEV_KEY_FILE);
    // `auth_settings` would create a missing development key: look first.
    if no_key_configured && !dev_key.exists() {
        return Err(CliError::NoToken(format!(
            "no token: pass --token (or set PLEXUS_TOKEN), or point --data-dir at the hub's data \
             directory so that a token can be minted from its development key (there is no {}; \
             `plexus serve --data-dir DIR` creates it on its first start)",
            dev_key.display()
        )));
    }
    let (settings, _) = plexus_server::auth_settings(config)
        .map_err(|e| CliError::NoToken(format!("no token: {e}")))?;
    let KeySource::Hmac { secret, alg } = settings.key else {
        return Err(CliError::NoToken(
            "no token: the configured key is a public key or a JWKS URL, which cannot sign; pass \
             --token (or set PLEXUS_TOKEN)"
                .to_owned(),
        ));
    };
    let request = MintRequest {
        sub: user.to_owned(),
        subscribe: valid(grants.subscribe),
        publish: valid(grants.publish),
        presence: grants.presence,
        sync_read: valid(grants.sync_read),
        sync_write: valid(grants.sync_write),
        rpc_register: valid(grants.rpc_register),
        rpc_call: valid(grants.rpc_call),
        rpc_admin: grants.rpc_admin,
        ttl: MINTED_TOKEN_TTL,
        issuer: settings.issuer,
        audience: settings.audience,
    };
    let minter = Minter {
        secret,
        alg,
        request,
    };
    // Mint once now, so a bad subject or key is reported as such.
    minter
        .mint()
        .map_err(|e| CliError::NoToken(format!("cannot mint a token: {e}")))?;
    Ok(minter)
}

/// Connects to `args.url` with `--token`, or with tokens minted for
/// `grants`.
pub(crate) async fn connect(
    args: &ConnArgs,
    config: &Config,
    grants: Grants,
) -> Result<Client, CliError> {
    let builder = Client::builder(args.url.clone());
    let builder = match &args.token {
        Some(token) => builder.token(token.clone()),
        None => {
            let minter = minter(config, &args.user, grants)?;
            builder.token_provider(move || {
                let token = minter.mint();
                async move { token }
            })
        }
    };
    builder
        .connect()
        .await
        .map_err(|e| CliError::connect(&args.url, &e))
}
