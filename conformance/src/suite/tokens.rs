//! §9.3 and §21: every token defect is refused with `unauthenticated` and
//! close 4000; what the spec allows is accepted.

use serde_json::{Value as Json, json};

use super::util::*;
use crate::check::{CaseError, CaseResult};
use crate::conn::Conn;
use crate::jwt::{self, HsAlg};
use crate::runner::ctx::{auth_params, unix_secs};
use crate::runner::{Case, Ctx};
use crate::{ensure, ensure_eq, fail, skip};

/// Seconds in a (Julian) year.
const YEAR: i64 = 31_557_600;

async fn rejected(ctx: &Ctx, token: &str, what: &str) -> CaseResult {
    let mut c = ctx.connect().await?;
    let id = c.request("auth", &auth_params(token, None)).await?;
    match c.response(id, PROMPT).await? {
        Ok(_) => fail!("the server accepted {what} (§9.3)"),
        Err(e) => ensure_eq!(e.code, "unauthenticated", "error code for {what}"),
    }
    c.expect_close(4000, PROMPT).await.map(drop)
}

async fn accepted(ctx: &Ctx, token: &str, what: &str) -> CaseResult<Conn> {
    let mut c = ctx.connect().await?;
    match ctx.auth(&mut c, token).await? {
        Ok(_) => Ok(c),
        Err(e) => fail!("the server refused {what}: {} ({})", e.code, e.message),
    }
}

/// A token for deliberately odd claims: a token command that will not
/// sign them skips the case.
async fn odd(ctx: &Ctx, claims: &Json) -> CaseResult<String> {
    ctx.settings()
        .tokens
        .sign(claims)
        .await
        .map_err(|e| CaseError::Skip(format!("the token source would not sign these claims: {e}")))
}

async fn valid(ctx: &Ctx) -> CaseResult<String> {
    ctx.token(&ctx.claims(&ctx.user("a"))).await
}

fn edit(t: Option<String>) -> CaseResult<String> {
    t.ok_or_else(|| CaseError::Fail("the token source returned something that is not a JWT".into()))
}

/// A case refusing the token that `make` builds from the case's claims.
fn claims_case(
    id: &str,
    section: &str,
    title: &str,
    what: &'static str,
    make: fn(&Ctx, Json) -> Json,
) -> Case {
    Case::new(id, section, title, move |ctx| async move {
        let claims = make(&ctx, ctx.claims(&ctx.user("a")));
        let t = odd(&ctx, &claims).await?;
        rejected(&ctx, &t, what).await
    })
}

fn plexus_case(id: &str, title: &str, what: &'static str, plexus: fn() -> Json) -> Case {
    Case::new(id, "9.3", title, move |ctx| async move {
        let mut claims = ctx.claims(&ctx.user("a"));
        claims["plexus"] = plexus();
        let t = odd(&ctx, &claims).await?;
        rejected(&ctx, &t, what).await
    })
}

fn leeway_secs(ctx: &Ctx) -> i64 {
    i64::try_from(ctx.settings().jwt_leeway.as_secs()).unwrap_or(i64::MAX / 4)
}

fn needs_leeway(ctx: &Ctx) -> CaseResult<i64> {
    let l = leeway_secs(ctx);
    if l < 2 {
        skip!(
            "needs a JWT leeway of at least 2 s (--jwt-leeway-ms; the server's is {} ms)",
            ctx.settings().jwt_leeway.as_millis()
        );
    }
    Ok(l)
}

fn remove(mut c: Json, key: &str) -> Json {
    c.as_object_mut().map(|o| o.remove(key));
    c
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "token.bad-signature",
            "9.3, 21",
            "a token whose signature does not verify is refused",
            |ctx| async move {
                let t = edit(jwt::corrupt_signature(&valid(&ctx).await?))?;
                rejected(&ctx, &t, "a token with a bad signature").await
            },
        ),
        Case::new(
            "token.alg-none-unsigned",
            "9.3, 21",
            "an unsigned token (alg none, empty signature) is refused",
            |ctx| async move {
                let t = edit(jwt::unsigned(&valid(&ctx).await?))?;
                rejected(&ctx, &t, "an unsigned alg:none token").await
            },
        ),
        Case::new(
            "token.alg-none-with-signature",
            "9.3, 21",
            "a token whose header says alg none but keeps a signature is refused",
            |ctx| async move {
                let t = edit(jwt::replace_header(
                    &valid(&ctx).await?,
                    &json!({"alg": "none", "typ": "JWT"}),
                ))?;
                rejected(&ctx, &t, "an alg:none token").await
            },
        ),
        Case::new(
            "token.alg-missing",
            "9.3",
            "a token whose header has no alg is refused",
            |ctx| async move {
                let t = edit(jwt::replace_header(
                    &valid(&ctx).await?,
                    &json!({"typ": "JWT"}),
                ))?;
                rejected(&ctx, &t, "a token without alg").await
            },
        ),
        Case::new(
            "token.alg-header-rs256",
            "9.3, 21",
            "an HMAC-signed token whose header claims RS256 is refused (no algorithm confusion)",
            |ctx| async move {
                let t = edit(jwt::replace_header(
                    &valid(&ctx).await?,
                    &json!({"alg": "RS256", "typ": "JWT"}),
                ))?;
                rejected(&ctx, &t, "a token whose header lies about its algorithm").await
            },
        ),
        Case::new(
            "token.alg-hs384",
            "9.3, 21",
            "a token correctly signed with HS384 (another algorithm) under the same key is refused",
            |ctx| async move {
                let key = ctx.secret()?;
                let t = jwt::sign(&ctx.claims(&ctx.user("a")), HsAlg::HS384, &key);
                rejected(&ctx, &t, "an HS384 token where HS256 is configured").await
            },
        ),
        Case::new(
            "token.alg-hs512",
            "9.3, 21",
            "a token correctly signed with HS512 under the same key is refused",
            |ctx| async move {
                let key = ctx.secret()?;
                let t = jwt::sign(&ctx.claims(&ctx.user("a")), HsAlg::HS512, &key);
                rejected(&ctx, &t, "an HS512 token where HS256 is configured").await
            },
        ),
        Case::new(
            "token.other-key",
            "9.3",
            "a token signed with another secret is refused",
            |ctx| async move {
                let t = jwt::sign(
                    &ctx.claims(&ctx.user("a")),
                    HsAlg::HS256,
                    b"another-secret-entirely-0123456789abcdef",
                );
                rejected(&ctx, &t, "a token signed with another key").await
            },
        ),
        claims_case(
            "token.expired",
            "9.3",
            "a token whose exp passed longer ago than the leeway is refused",
            "an expired token",
            |ctx, mut c| {
                let now = unix_secs();
                c["exp"] = json!(now - leeway_secs(ctx) - 120);
                c["iat"] = json!(now - leeway_secs(ctx) - 3600);
                c
            },
        ),
        Case::new(
            "token.expired-within-leeway",
            "9.3, 9.4, P5",
            "a token expired less than the leeway ago is accepted, with expires_in_ms to exp + leeway",
            |ctx| async move {
                let l = needs_leeway(&ctx)?;
                let mut c = ctx.claims(&ctx.user("a"));
                let exp = unix_secs() - l / 2;
                c["exp"] = json!(exp);
                let t = ctx.token(&c).await?;
                let mut conn = ctx.connect().await?;
                let t0 = crate::runner::ctx::unix_now();
                let info = match ctx.auth(&mut conn, &t).await? {
                    Ok(i) => i,
                    Err(e) => fail!("a token within the leeway was refused: {}", e.code),
                };
                let t1 = crate::runner::ctx::unix_now();
                let Some(got) = info.expires_in_ms else {
                    fail!("no expires_in_ms");
                };
                super::auth::check_expires(&ctx, got, exp, t0, t1)
            },
        ),
        claims_case(
            "token.nbf-future",
            "9.3",
            "a token whose nbf is further ahead than the leeway is refused",
            "a token not yet valid",
            |ctx, mut c| {
                c["nbf"] = json!(unix_secs() + leeway_secs(ctx) + 120);
                c
            },
        ),
        Case::new(
            "token.nbf-within-leeway",
            "9.3",
            "a token whose nbf is less than the leeway ahead is accepted",
            |ctx| async move {
                let l = needs_leeway(&ctx)?;
                let mut c = ctx.claims(&ctx.user("a"));
                c["nbf"] = json!(unix_secs() + l / 2);
                let t = ctx.token(&c).await?;
                accepted(&ctx, &t, "a token within the nbf leeway")
                    .await
                    .map(drop)
            },
        ),
        claims_case(
            "token.exp-not-a-number",
            "9.3",
            "a token whose exp is a string is refused",
            "a token with exp \"soon\"",
            |_, mut c| {
                c["exp"] = json!("soon");
                c
            },
        ),
        claims_case(
            "token.nbf-not-a-number",
            "9.3",
            "a token whose nbf is a string is refused",
            "a token with nbf \"now\"",
            |_, mut c| {
                c["nbf"] = json!("now");
                c
            },
        ),
        claims_case(
            "token.exp-far-future",
            "9.3, P7",
            "a token whose exp is more than 100 years ahead is refused",
            "a token with exp 101 years ahead",
            |_, mut c| {
                c["exp"] = json!(unix_secs() + 101 * YEAR);
                c
            },
        ),
        Case::new(
            "token.exp-decades-ahead",
            "9.3, 9.4, P7",
            "a token whose exp is 50 years ahead is accepted and reports its expiry",
            |ctx| async move {
                let mut c = ctx.claims(&ctx.user("a"));
                c["exp"] = json!(unix_secs() + 50 * YEAR);
                let t = ctx.token(&c).await?;
                let conn = accepted(&ctx, &t, "a token valid for 50 years").await?;
                ensure!(
                    conn.auth.as_ref().and_then(|a| a.expires_in_ms).is_some(),
                    "no expires_in_ms for a token that expires (§11.1)"
                );
                Ok(())
            },
        ),
        claims_case(
            "token.sub-missing",
            "9.3",
            "a token without sub is refused",
            "a token without sub",
            |_, c| remove(c, "sub"),
        ),
        claims_case(
            "token.sub-empty",
            "9.3",
            "a token whose sub is empty is refused",
            "a token with an empty sub",
            |_, mut c| {
                c["sub"] = json!("");
                c
            },
        ),
        claims_case(
            "token.sub-not-a-string",
            "9.3",
            "a token whose sub is a number is refused",
            "a token with sub 42",
            |_, mut c| {
                c["sub"] = json!(42);
                c
            },
        ),
        Case::new(
            "token.iss-wrong",
            "9.3",
            "with an issuer configured, a token from another issuer is refused",
            |ctx| async move {
                let Some(iss) = ctx.settings().issuer.clone() else {
                    skip!("needs --issuer (the server's configured issuer)");
                };
                let mut c = ctx.claims(&ctx.user("a"));
                c["iss"] = json!(format!("{iss}.evil"));
                let t = ctx.token(&c).await?;
                rejected(&ctx, &t, "a token from another issuer").await
            },
        ),
        Case::new(
            "token.iss-missing",
            "9.3",
            "with an issuer configured, a token without iss is refused",
            |ctx| async move {
                if ctx.settings().issuer.is_none() {
                    skip!("needs --issuer");
                }
                let c = remove(ctx.claims(&ctx.user("a")), "iss");
                let t = ctx.token(&c).await?;
                rejected(&ctx, &t, "a token without iss").await
            },
        ),
        Case::new(
            "token.aud-wrong",
            "9.3",
            "with an audience configured, a token for another audience is refused",
            |ctx| async move {
                let Some(aud) = ctx.settings().audience.clone() else {
                    skip!("needs --audience (the server's configured audience)");
                };
                let mut c = ctx.claims(&ctx.user("a"));
                c["aud"] = json!(format!("{aud}-other"));
                let t = ctx.token(&c).await?;
                rejected(&ctx, &t, "a token for another audience").await
            },
        ),
        Case::new(
            "token.aud-missing",
            "9.3",
            "with an audience configured, a token without aud is refused",
            |ctx| async move {
                if ctx.settings().audience.is_none() {
                    skip!("needs --audience");
                }
                let c = remove(ctx.claims(&ctx.user("a")), "aud");
                let t = ctx.token(&c).await?;
                rejected(&ctx, &t, "a token without aud").await
            },
        ),
        Case::new(
            "token.aud-array-containing",
            "9.3",
            "a token whose aud is an array containing the audience is accepted",
            |ctx| async move {
                let Some(aud) = ctx.settings().audience.clone() else {
                    skip!("needs --audience");
                };
                let mut c = ctx.claims(&ctx.user("a"));
                c["aud"] = json!(["someone-else", aud]);
                let t = ctx.token(&c).await?;
                accepted(&ctx, &t, "a token whose aud array contains the audience")
                    .await
                    .map(drop)
            },
        ),
        plexus_case(
            "token.plexus-not-object",
            "a token whose plexus claim is not an object is refused",
            "plexus: [..]",
            || json!(["chat.>"]),
        ),
        plexus_case(
            "token.plexus-sub-not-array",
            "a token whose plexus.sub is a string is refused",
            "plexus.sub: \"..\"",
            || json!({"sub": "chat.>"}),
        ),
        plexus_case(
            "token.plexus-sub-not-strings",
            "a token whose plexus.sub holds a number is refused",
            "plexus.sub: [1]",
            || json!({"sub": [1]}),
        ),
        plexus_case(
            "token.plexus-pub-invalid-pattern",
            "a token whose plexus.pub holds an invalid pattern is refused",
            "plexus.pub: [\"a.>.b\"]",
            || json!({"pub": ["a.>.b"]}),
        ),
        plexus_case(
            "token.plexus-pattern-too-long",
            "a token with a pattern longer than 1024 bytes is refused",
            "a 1025-byte pattern",
            || json!({"sub": ["a".repeat(1025)]}),
        ),
        plexus_case(
            "token.plexus-presence-not-bool",
            "a token whose plexus.presence is a string is refused",
            "plexus.presence: \"yes\"",
            || json!({"presence": "yes"}),
        ),
        Case::new(
            "token.plexus-unknown-member",
            "9.3",
            "unknown members of the plexus claim are ignored",
            |ctx| async move {
                let mut c = ctx.claims(&ctx.user("a"));
                c["plexus"]["history"] = json!({"read": ["chat.>"]});
                let t = ctx.token(&c).await?;
                let mut conn = accepted(&ctx, &t, "a plexus claim with an unknown member").await?;
                subscribe(&mut conn, &ctx.topic("t")).await
            },
        ),
        Case::new(
            "token.not-three-parts",
            "9.3",
            "a token of two parts is refused",
            |ctx| async move {
                let t = valid(&ctx).await?;
                let two = t
                    .rsplit_once('.')
                    .map(|(a, _)| a.to_owned())
                    .unwrap_or_default();
                rejected(&ctx, &two, "a token of two parts").await
            },
        ),
        Case::new(
            "token.four-parts",
            "9.3",
            "a token with a fourth part is refused",
            |ctx| async move {
                let t = format!("{}.AAAA", valid(&ctx).await?);
                rejected(&ctx, &t, "a token of four parts").await
            },
        ),
        Case::new(
            "token.not-base64url",
            "9.3",
            "a token whose parts are not base64url is refused",
            |ctx| async move { rejected(&ctx, "!!!.@@@.###", "a token that is not base64url").await },
        ),
        Case::new(
            "token.header-not-json",
            "9.3",
            "a token whose header is not JSON is refused",
            |ctx| async move {
                let t = valid(&ctx).await?;
                let (_, p, s) =
                    jwt::parts(&t).ok_or_else(|| CaseError::Fail("not a JWT".into()))?;
                rejected(
                    &ctx,
                    &format!("{}.{p}.{s}", jwt::b64(b"not json")),
                    "a token with a non-JSON header",
                )
                .await
            },
        ),
        Case::new(
            "token.claims-not-json",
            "9.3",
            "a signed token whose payload is not JSON is refused",
            |ctx| async move {
                let key = ctx.secret().unwrap_or_else(|_| b"no-secret".to_vec());
                let input = format!(
                    "{}.{}",
                    jwt::b64(jwt::header("HS256").to_string().as_bytes()),
                    jwt::b64(b"sub=alice")
                );
                let t = format!(
                    "{input}.{}",
                    jwt::b64(&jwt::hmac(HsAlg::HS256, &key, input.as_bytes()))
                );
                rejected(&ctx, &t, "a token whose payload is not JSON").await
            },
        ),
        Case::new(
            "token.claims-not-object",
            "9.3",
            "a signed token whose payload is a JSON array is refused",
            |ctx| async move {
                let key = ctx.secret().unwrap_or_else(|_| b"no-secret".to_vec());
                let t = jwt::sign(&json!(["sub", "alice"]), HsAlg::HS256, &key);
                rejected(&ctx, &t, "a token whose claims are an array").await
            },
        ),
        Case::new(
            "token.empty",
            "9.3, 11.1",
            "an empty token is refused",
            |ctx| async move { rejected(&ctx, "", "an empty token").await },
        ),
    ]
}
