//! `POST /auth/login`: AIWM's IAM login. Answers `accessToken` and, for
//! clients of forge's habit, `token` too (DIALECTS.md, Collisions).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::Aiwm;
use super::{AiwmBody, AiwmResult, Fields};
use crate::AppState;
use crate::auth::{ClientIp, password_login};
use crate::openapi::Api;

async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AiwmBody(body): AiwmBody,
) -> AiwmResult<Json<Value>> {
    let mut f = Fields::new(body);
    let username = f.string("username", false);
    let email = f.string("email", false);
    let password = f.string_max("password", true, 1024);
    if username.is_none() && email.is_none() {
        f.error("username must be a string".into());
    }
    f.finish()?;
    let login = username.or(email).unwrap_or_default();
    let password = password.unwrap_or_default();
    let user = password_login::<Aiwm>(&state, ip, &login, &password).await?;
    let issued = state.identity.issue_token(&user)?;
    Ok(Json(json!({
        "accessToken": issued.token,
        "token": issued.token,
        "expiresIn": issued.expires_in,
        "user": {
            "id": user.id,
            "username": user.username,
            "email": user.email,
            "roles": user.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "orgId": user.org_id,
        },
    })))
}

pub(super) fn routes() -> Api {
    Api::new().public_post(
        "/auth/login",
        "aiwm: auth",
        "Log in with username (or email) and password",
        login,
    )
}
