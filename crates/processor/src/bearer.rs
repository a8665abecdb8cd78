//! `Authorization: Bearer <token>` on the requests of `worker` and `upload`.

use anyhow::Context;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

/// Default headers for a client of the task manager: the bearer token when one is given.
/// `tokens` may be a comma-separated list, as in the task manager's `API_TOKEN` and
/// `WORKER_TOKEN` (a shared `.env`); its first token is sent. None for no or a blank token.
pub fn headers(tokens: Option<&str>) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    let first = tokens.and_then(|list| list.split(',').map(str::trim).find(|t| !t.is_empty()));
    if let Some(token) = first {
        // The token is kept out of the message.
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .ok()
            .context("the token holds characters that an HTTP header cannot carry")?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_token_is_sent() {
        let sent = headers(Some(" first, second")).unwrap();
        assert_eq!(sent[AUTHORIZATION], "Bearer first");
        assert!(sent[AUTHORIZATION].is_sensitive());
        assert!(headers(None).unwrap().is_empty());
        assert!(headers(Some(" , ")).unwrap().is_empty());
        let err = headers(Some("line\nbreak")).unwrap_err();
        assert!(!err.to_string().contains("break"), "{err}");
    }
}
