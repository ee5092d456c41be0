//! Twilio's voice webhook: `POST /v1/telephony/twilio/voice` answers TwiML for each incoming
//! call, `POST /v1/telephony/twilio/status` records its end. Requests are authenticated by
//! their `X-Twilio-Signature`, not by a bearer key.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::core::{Call, CallId, CallStart, Code, Entropy, PhoneNumber, Reason, Timestamp};
use crate::service::ServiceError;
use crate::telephony::prompts::{Prompt, Voice};
use crate::telephony::twilio as twiml;

/// Call statuses after which a call is over.
const FINAL: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

struct Verified {
    params: Vec<(String, String)>,
}

impl Verified {
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
fn verify(
    s: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Verified, ApiError> {
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
    Ok(Verified { params })
}

fn twiml_response(xml: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], xml).into_response()
}

/// The longest pause of one hold turn: a caller on hold hears "stay on the line" at least
/// this often.
const HOLD_TURN_SECS: u32 = 60;

/// What a voice request's URL says about where the call stands: back from a hold
/// (`step=done`), or after how many failed tries for the code (`tries=N`). Twilio signs the
/// URL it posts to, so a caller cannot change them.
struct Step {
    back_from_hold: bool,
    tries: u32,
}

impl Step {
    fn of(uri: &Uri) -> Step {
        let mut step = Step {
            back_from_hold: false,
            tries: 0,
        };
        for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            match (k.as_ref(), v.as_ref()) {
                ("step", "done") => step.back_from_hold = true,
                ("tries", n) => step.tries = n.parse().unwrap_or(0),
                _ => {}
            }
        }
        step
    }
}

pub async fn voice(
    State(s): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let v = verify(&s, &uri, &headers, &body)?;
    let to =
        PhoneNumber::parse(v.require("To")?).map_err(|e| ApiError::invalid(format!("To: {e}")))?;
    let call_id = CallId::parse(v.require("CallSid")?)
        .map_err(|e| ApiError::invalid(format!("CallSid: {e}")))?;
    // Withheld or non-E.164 callers ("anonymous", "client:…") are simply unknown.
    let caller = v.get("From").and_then(|f| PhoneNumber::parse(f).ok());
    let voice = s.voice_of(to);
    let path = uri.path();
    let step = Step::of(&uri);

    if step.back_from_hold {
        return held(&s, voice, call_id, path).await;
    }
    let shared = s.service.is_shared_number(to);
    let mut code = None;
    if shared {
        // The caller types the code first; the call is recorded once a code matches.
        let Some(typed) = v.get("Digits") else {
            return Ok(twiml_response(twiml::ask_code(voice, None, 0, path)));
        };
        code = Code::parse(typed).ok();
        let matches = match code {
            Some(c) => s.service.attribute(to, caller, Some(c), None)?.0.reason == Reason::Code,
            None => false,
        };
        if !matches {
            // Asked again until the tries are spent, then a goodbye: never a transfer, so a
            // bot typing codes at random reaches nobody and is billed for every call.
            let failed = step.tries.min(twiml::CODE_TRIES - 1) + 1;
            return Ok(twiml_response(match failed < twiml::CODE_TRIES {
                true => twiml::ask_code(voice, Some(Prompt::WrongCode), failed, path),
                false => twiml::speak(voice, Prompt::GoodbyeCode, &[], 1),
            }));
        }
    }
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
            return Ok(twiml_response(twiml::speak(
                voice,
                Prompt::GoodbyeCode,
                &[],
                1,
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(t) = call.ticketing {
        let formula = s.service.formula_of(to);
        let (min, required) = formula.map_or((0, 1), |f| (f.min_call_secs, f.calls_required));
        let alone = caller.is_none() && required > 1;
        return Ok(twiml_response(
            if alone || t.code.is_some() || call.counted || min == 0 {
                ticketing_words(voice, t, alone)
            } else {
                // Keep the caller on the line for the formula's minimum, then come back for the code.
                twiml::hold(voice, min.min(HOLD_TURN_SECS), &hold_url(path))
            },
        ));
    }
    if let Some(t) = &call.attribution.target {
        return Ok(twiml_response(twiml::dial(t)));
    }
    if let Some(needed) = payment(&s, &call)? {
        // A call paying a lease with no target: held on the line until it has paid.
        return Ok(twiml_response(twiml::hold(
            voice,
            needed.clamp(1, HOLD_TURN_SECS),
            &hold_url(path),
        )));
    }
    if shared {
        // The code matched a moment ago but the call was not attributed by it (the lease was
        // paid meanwhile): never the pool's fallback from the shared number.
        return Ok(twiml_response(twiml::speak(
            voice,
            Prompt::GoodbyeCode,
            &[],
            1,
        )));
    }
    Ok(twiml_response(match s.service.fallback_of(to) {
        Some(t) => twiml::dial(&t),
        None => twiml::speak(voice, Prompt::NotAssigned, &[], 1),
    }))
}

fn hold_url(path: &str) -> String {
    format!("{path}?step=done")
}

/// A call on a lease that asks an `amount`, in a pool with a tariff, with nothing to dial:
/// how long (from its start) it must last for its charge to pay what the lease still misses,
/// and for it to count (`min_call_secs`). A per-call rate below what is missing pays what it
/// can after a second. `None`: not a paying call.
fn payment(s: &AppState, call: &Call) -> Result<Option<u32>, ApiError> {
    let Some(id) = call.attribution.lease else {
        return Ok(None);
    };
    let view = s.service.get(&id)?;
    let (Some(asked), Some(tariff)) = (view.lease.amount, view.tariff) else {
        return Ok(None);
    };
    let missing = asked.saturating_sub(view.lease.amount_paid);
    let secs = tariff.secs_to_reach(missing).unwrap_or(1);
    Ok(Some(secs.max(view.lease.min_call_secs).max(1)))
}

/// Back from a hold turn: another turn while the call has not lasted long enough (for its
/// lease's amount, or its formula's minimum), else its end is recorded now, at the length
/// it has lasted (what pays the lease or counts for the formula; Twilio's status callback
/// later keeps this first end), and the caller hears the outcome before hanging up.
async fn held(
    s: &AppState,
    voice: &Voice,
    call_id: CallId,
    path: &str,
) -> Result<Response, ApiError> {
    let call = s
        .service
        .call(&call_id)
        .ok_or_else(|| ApiError::invalid("CallSid: this call has not started"))?;
    let ticketing = call.ticketing.is_some();
    let needed = match ticketing {
        true => s
            .service
            .formula_of(call.called)
            .map_or(0, |f| f.min_call_secs),
        false => payment(s, &call)?
            .ok_or_else(|| ApiError::invalid("CallSid: this call is not on hold"))?,
    };
    let held = s.service.now().since(call.started_at).as_secs() as u32;
    let call = match call.end {
        // Twilio retried this request: the end is already recorded.
        Some(_) => call,
        None if held < needed => {
            return Ok(twiml_response(twiml::hold(
                voice,
                (needed - held).min(HOLD_TURN_SECS),
                &hold_url(path),
            )))
        }
        None => s.service.call_end(call_id, held, None).await?,
    };
    if let Some(t) = call.ticketing {
        return Ok(twiml_response(ticketing_words(voice, t, false)));
    }
    let id = call
        .attribution
        .lease
        .ok_or_else(|| ApiError::invalid("CallSid: this call is not on hold"))?;
    let paid = s.service.get(&id)?.lease.paid();
    Ok(twiml_response(twiml::speak(
        voice,
        if paid {
            Prompt::Paid
        } else {
            Prompt::PartlyPaid
        },
        &[],
        1,
    )))
}

/// What the voice server says after a call on a ticketing number: the code (digit by digit,
/// twice), or how many calls are still missing; to a withheld caller on a formula of several
/// calls (`alone`), that progress needs a visible number (their calls cannot add up).
fn ticketing_words(voice: &Voice, t: crate::core::TicketingAnswer, alone: bool) -> String {
    match t.code {
        Some(code) => twiml::speak(voice, Prompt::AccessCode, &[("code", &code.to_string())], 2),
        None if alone => twiml::speak(voice, Prompt::Withheld, &[], 1),
        None if t.calls_missing == 1 => twiml::speak(voice, Prompt::CallsMissingOne, &[], 1),
        None => twiml::speak(
            voice,
            Prompt::CallsMissing,
            &[("n", &t.calls_missing.to_string())],
            1,
        ),
    }
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
