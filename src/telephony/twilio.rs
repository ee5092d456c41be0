//! Twilio's voice webhook: request signatures (`X-Twilio-Signature`) and TwiML answers.
//! Pure functions; the HTTP handler in `http::twilio` wires them to the service.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use super::prompts::{Prompt, Voice};
use crate::core::Target;

/// Twilio's signature: base64(HMAC-SHA1(auth token, URL + every POST parameter's name and
/// value, sorted by name)).
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Checks a request's signature in constant time.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], given: &str) -> bool {
    let expected = signature(auth_token, url, params);
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn response(body: &str) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{body}</Response>")
}

fn say(voice: &Voice, text: &str) -> String {
    format!(
        "<Say language=\"{}\">{}</Say>",
        escape(voice.locale()),
        escape(text)
    )
}

/// Connects the caller to `target` (a number, or a SIP URI).
pub fn dial(target: &Target) -> String {
    let noun = match target {
        Target::Phone(n) => format!("<Number>{n}</Number>"),
        Target::Sip(uri) => format!("<Sip>{}</Sip>", escape(uri)),
    };
    response(&format!("<Dial>{noun}</Dial>"))
}

/// Tries a caller has to type a shared number's code, in all.
pub const CODE_TRIES: u32 = 3;

/// Asks for the four-digit code, for every try left after `failed` ones: each `<Gather>` posts
/// what was typed to `path` with the number of tries that failed before it (`?tries=N`, none
/// for the first); silence falls through to the next `<Gather>`, and after the last to a
/// polite goodbye. So the count needs no state: Twilio signs the URL it posts to. `lead` is
/// said first (why the code is asked again).
pub fn ask_code(voice: &Voice, lead: Option<Prompt>, failed: u32, path: &str) -> String {
    let mut body = lead
        .map(|p| say(voice, &voice.text(p, &[])))
        .unwrap_or_default();
    for n in failed..CODE_TRIES {
        let action = match n {
            0 => path.to_owned(),
            n => format!("{path}?tries={n}"),
        };
        let ask = match n {
            0 => Prompt::AskCode,
            _ => Prompt::AskCodeAgain,
        };
        if n > failed {
            body += &say(voice, &voice.text(Prompt::NoCode, &[]));
        }
        body += &format!(
            "<Gather input=\"dtmf\" numDigits=\"4\" timeout=\"10\" action=\"{}\" method=\"POST\">{}</Gather>",
            escape(&action),
            say(voice, &voice.text(ask, &[])),
        );
    }
    body += &say(voice, &voice.text(Prompt::GoodbyeCode, &[]));
    response(&format!("{body}<Hangup/>"))
}

/// Says `prompt` (with its `args`; a `code` digit by digit) `times` times, then hangs up.
pub fn speak(voice: &Voice, prompt: Prompt, args: &[(&str, &str)], times: usize) -> String {
    let text = voice.text(prompt, args);
    let said: String = (0..times).map(|_| say(voice, &text)).collect();
    response(&format!("{said}<Hangup/>"))
}

/// One turn of a hold: "stay on the line", `secs` of silence, then back to `url` for what
/// comes next (another turn, or the outcome). The call stays up meanwhile, so its duration
/// (what the caller is billed) grows.
pub fn hold(voice: &Voice, secs: u32, url: &str) -> String {
    response(&format!(
        "{}<Pause length=\"{secs}\"/><Redirect method=\"POST\">{}</Redirect>",
        say(voice, &voice.text(Prompt::Hold, &[])),
        escape(url)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn signature_matches_twilios_documented_example() {
        // The example of Twilio's request-validation documentation and helper libraries.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = vec![
            p("To", "+18005551212"),
            p("CallSid", "CA1234567890ABCDE"),
            p("Caller", "+14158675309"),
            p("From", "+14158675309"),
            p("Digits", "1234"),
        ];
        let sig = signature("12345", url, &params);
        assert_eq!(sig, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert!(verify("12345", url, &params, &sig));
        assert!(!verify("12346", url, &params, &sig));
        assert!(!verify(
            "12345",
            "https://mycompany.com/other",
            &params,
            &sig
        ));
    }

    #[test]
    fn twiml_escapes_what_it_embeds() {
        let t = Target::parse("sip:adv@pbx.example;transport=tls").unwrap();
        assert!(dial(&t).contains("<Sip>sip:adv@pbx.example;transport=tls</Sip>"));
        assert!(ask_code(&Voice::default(), None, 1, "/a?x=1&y=2")
            .contains("action=\"/a?x=1&amp;y=2?tries=1\""));
    }
}
