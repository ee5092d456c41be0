//! Twilio's voice webhook: request signatures (`X-Twilio-Signature`) and TwiML answers.
//! Pure functions; the HTTP handler in `http::twilio` wires them to the service.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

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

fn say(language: &str, text: &str) -> String {
    format!(
        "<Say language=\"{}\">{}</Say>",
        escape(language),
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

/// Asks for the four-digit code shown on the page, posting it back to `action`.
pub fn gather_code(language: &str, action: &str) -> String {
    response(&format!(
        "<Gather input=\"dtmf\" numDigits=\"4\" timeout=\"10\" action=\"{}\" method=\"POST\">{}</Gather>{}<Hangup/>",
        escape(action),
        say(language, "Bonjour. Tapez le code à quatre chiffres affiché sur la page."),
        say(language, "Nous n'avons pas reçu de code. Au revoir."),
    ))
}

/// A polite refusal: nobody to connect the caller to.
pub fn refuse(language: &str, code_given: bool) -> String {
    let text = if code_given {
        "Ce code n'est pas valable ou a expiré. Affichez à nouveau le numéro sur la page. Au revoir."
    } else {
        "Ce numéro n'est plus attribué. Affichez à nouveau le numéro sur la page de l'annonce. Au revoir."
    };
    response(&format!("{}<Hangup/>", say(language, text)))
}

/// Reads digits one by one, twice (`1 2 3 4`), as a voice server reads a code.
pub fn spell_digits(digits: &str) -> String {
    let spaced: Vec<String> = digits.chars().map(String::from).collect();
    spaced.join(" ")
}

/// Speaks `text`, holds for `secs` seconds, then fetches new instructions from `url`.
pub fn hold_then_redirect(language: &str, text: &str, secs: u32, url: &str) -> String {
    response(&format!(
        "{}<Pause length=\"{secs}\"/><Redirect method=\"POST\">{}</Redirect>",
        say(language, text),
        escape(url)
    ))
}

/// Speaks `text` (repeated `times`), then hangs up.
pub fn speak(language: &str, text: &str, times: usize) -> String {
    let said: String = (0..times).map(|_| say(language, text)).collect();
    response(&format!("{said}<Hangup/>"))
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
        assert!(gather_code("fr-FR", "/a?x=1&y=2").contains("action=\"/a?x=1&amp;y=2\""));
    }
}
