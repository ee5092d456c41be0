//! Twilio's voice webhook: `POST /v1/telephony/twilio/voice` answers TwiML for each incoming
//! call, `POST /v1/telephony/twilio/status` records its end. Requests are authenticated by
//! their `X-Twilio-Signature`, not by a bearer key.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::config::TwilioConfig;
use crate::core::{CallId, CallStart, Code, Entropy, PhoneNumber, Timestamp};
use crate::service::ServiceError;
use crate::telephony::twilio as twiml;

/// Call statuses after which a call is over.
const FINAL: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

struct Verified<'a> {
    config: &'a TwilioConfig,
    params: Vec<(String, String)>,
}

impl Verified<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::invalid(format!("{name}: required")))
    }
}

/// Checks the signature over the URL Twilio used and the form parameters.
fn verify<'a>(
    s: &'a AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Verified<'a>, ApiError> {
    let config = s.twilio.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "twilio-not-configured",
            "the Twilio webhook is off: add a [twilio] section to pool.toml",
        )
    })?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let url = match &config.public_url {
        Some(base) => format!("{base}{path}"),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            format!("http://{host}{path}")
        }
    };
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let given = headers
        .get("x-twilio-signature")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !twiml::verify(&config.auth_token, &url, &params, given) {
        return Err(ApiError::forbidden(
            "the X-Twilio-Signature does not match this request",
        ));
    }
    Ok(Verified { config, params })
}

fn twiml_response(xml: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], xml).into_response()
}

pub async fn voice(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v = verify(&s, &uri, &headers, &body)?;
    let language = v.config.language.as_str();
    let to =
        PhoneNumber::parse(v.require("To")?).map_err(|e| ApiError::invalid(format!("To: {e}")))?;
    let call_id = CallId::parse(v.require("CallSid")?)
        .map_err(|e| ApiError::invalid(format!("CallSid: {e}")))?;
    // Withheld or non-E.164 callers ("anonymous", "client:…") are simply unknown.
    let caller = v.get("From").and_then(|f| PhoneNumber::parse(f).ok());
    let digits = v.get("Digits").filter(|d| !d.is_empty());

    if uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "step=done"))
    {
        return ticketing_done(&s, language, call_id).await;
    }
    if digits.is_none() && s.service.is_shared_number(to) {
        // Ask for the code first; the call is recorded once it is typed.
        return Ok(twiml_response(twiml::gather_code(language, uri.path())));
    }
    let code = digits.and_then(|d| Code::parse(d).ok());
    let start = CallStart {
        id: call_id,
        called: to,
        caller,
        code,
        at: Timestamp::ZERO,
        entropy: Entropy::default(),
    };
    let (call, _) = match s.service.call_start(start, false).await {
        Ok(c) => c,
        // A retried webhook of a call started differently (another code): refuse politely.
        Err(ServiceError::Core(crate::core::CoreError::CallConflict(_))) => {
            return Ok(twiml_response(twiml::refuse(language, true)))
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(t) = call.ticketing {
        let min = s.service.formula_of(to).map_or(0, |f| f.min_call_secs);
        return Ok(twiml_response(
            if t.code.is_some() || call.counted || min == 0 {
                ticketing_words(language, t)
            } else {
                // Keep the caller on the line for the formula's minimum, then come back for the code.
                twiml::hold_then_redirect(
                    language,
                    "Merci de rester en ligne.",
                    min,
                    &format!("{}?step=done", uri.path()),
                )
            },
        ));
    }
    let target = call
        .attribution
        .target
        .clone()
        .or_else(|| s.service.fallback_of(to));
    Ok(twiml_response(match target {
        Some(t) => twiml::dial(&t),
        None => twiml::refuse(language, digits.is_some()),
    }))
}

/// What the voice server says after a call on a ticketing number: the code (digit by digit,
/// twice), or how many calls are still missing.
fn ticketing_words(language: &str, t: crate::core::TicketingAnswer) -> String {
    match t.code {
        Some(code) => {
            let digits = twiml::spell_digits(&code.to_string());
            twiml::speak(language, &format!("Votre code d'accès est : {digits}."), 2)
        }
        None => {
            let n = t.calls_missing;
            let calls = if n == 1 { "appel" } else { "appels" };
            twiml::speak(
                language,
                &format!("Merci. Il vous reste {n} {calls} à passer pour obtenir votre code."),
                1,
            )
        }
    }
}

/// Back from the hold on a ticketing number: the call has lasted the minimum, so it ends
/// (for the formula) now, and the caller hears the outcome.
async fn ticketing_done(
    s: &AppState,
    language: &str,
    call_id: CallId,
) -> Result<Response, ApiError> {
    let started = s
        .service
        .call(&call_id)
        .ok_or_else(|| ApiError::invalid("CallSid: this call has not started"))?
        .started_at;
    let held = s.service.now().since(started).as_secs() as u32;
    let call = s.service.call_end(call_id, held, None).await?;
    let t = call
        .ticketing
        .ok_or_else(|| ApiError::invalid("To: not a ticketing number"))?;
    Ok(twiml_response(ticketing_words(language, t)))
}

pub async fn status(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v = verify(&s, &uri, &headers, &body)?;
    let call_id = CallId::parse(v.require("CallSid")?)
        .map_err(|e| ApiError::invalid(format!("CallSid: {e}")))?;
    let status = v.require("CallStatus")?;
    if !FINAL.contains(&status) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let duration: u32 = v
        .get("CallDuration")
        .unwrap_or("0")
        .parse()
        .map_err(|_| ApiError::invalid("CallDuration: expected whole seconds"))?;
    match s.service.call_end(call_id, duration, None).await {
        // A call that never started here (hung up at the code prompt) has nothing to end.
        // An end already recorded (a ticketing call ended for its formula while on hold) keeps
        // its first duration.
        Ok(_)
        | Err(ServiceError::Core(
            crate::core::CoreError::UnknownCall | crate::core::CoreError::CallConflict(_),
        )) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(e.into()),
    }
}
