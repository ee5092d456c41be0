//! What the voice says: every prompt in every shipped language (`fr`, `de`, `it`, `en`), in
//! one table, and a pool's own wording over it (`[pool.prompts]` in `pool.toml`). Pure data
//! and lookups; `twilio.rs` turns the texts into TwiML.

use std::collections::BTreeMap;

/// A thing the voice says. Its name (`ask_code`…) is how `pool.toml` overrides it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prompt {
    /// On the shared number, first: type the code.
    AskCode,
    /// After a wrong or missing code: type it again.
    AskCodeAgain,
    /// Said before asking again, after a wrong code.
    WrongCode,
    /// Said before asking again, after silence.
    NoCode,
    /// After the last try: no code matched, goodbye (never a transfer).
    GoodbyeCode,
    /// A number nobody holds, with no fallback.
    NotAssigned,
    /// Every pause of a hold: stay on the line while the call is billed.
    Hold,
    /// The call paid the lease: confirmation, before hanging up.
    Paid,
    /// The call ended its hold but the lease still asks for more (another call).
    PartlyPaid,
    /// A ticketing formula completed: the access code (`{code}`, read digit by digit).
    AccessCode,
    /// A ticketing formula missing one more call.
    CallsMissingOne,
    /// A ticketing formula missing `{n}` more calls.
    CallsMissing,
    /// A withheld caller on a formula of several calls: progress needs a visible number.
    Withheld,
}

impl Prompt {
    pub const ALL: [Prompt; 13] = [
        Prompt::AskCode,
        Prompt::AskCodeAgain,
        Prompt::WrongCode,
        Prompt::NoCode,
        Prompt::GoodbyeCode,
        Prompt::NotAssigned,
        Prompt::Hold,
        Prompt::Paid,
        Prompt::PartlyPaid,
        Prompt::AccessCode,
        Prompt::CallsMissingOne,
        Prompt::CallsMissing,
        Prompt::Withheld,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Prompt::AskCode => "ask_code",
            Prompt::AskCodeAgain => "ask_code_again",
            Prompt::WrongCode => "wrong_code",
            Prompt::NoCode => "no_code",
            Prompt::GoodbyeCode => "goodbye_code",
            Prompt::NotAssigned => "not_assigned",
            Prompt::Hold => "hold",
            Prompt::Paid => "paid",
            Prompt::PartlyPaid => "partly_paid",
            Prompt::AccessCode => "access_code",
            Prompt::CallsMissingOne => "calls_missing_one",
            Prompt::CallsMissing => "calls_missing",
            Prompt::Withheld => "withheld",
        }
    }

    pub fn parse(name: &str) -> Option<Prompt> {
        Prompt::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The placeholders its text may hold.
    fn placeholders(self) -> &'static [&'static str] {
        match self {
            Prompt::AccessCode => &["code"],
            Prompt::CallsMissing => &["n"],
            _ => &[],
        }
    }
}

/// A shipped language: which column of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Fr,
    De,
    It,
    En,
}

impl Lang {
    pub const ALL: [Lang; 4] = [Lang::Fr, Lang::De, Lang::It, Lang::En];

    pub fn code(self) -> &'static str {
        match self {
            Lang::Fr => "fr",
            Lang::De => "de",
            Lang::It => "it",
            Lang::En => "en",
        }
    }

    /// The `<Say language>` tag for a bare language code.
    fn default_locale(self) -> &'static str {
        match self {
            Lang::Fr => "fr-FR",
            Lang::De => "de-DE",
            Lang::It => "it-IT",
            Lang::En => "en-GB",
        }
    }
}

/// Every prompt in fr, de, it, en (in `Lang::ALL`'s order), in `Prompt::ALL`'s order.
const TABLE: [[&str; 4]; 13] = [
    [
        "Bonjour. Tapez le code à quatre chiffres affiché sur la page.",
        "Guten Tag. Bitte geben Sie den vierstelligen Code ein, der auf der Seite angezeigt wird.",
        "Buongiorno. Digiti il codice di quattro cifre indicato sulla pagina.",
        "Hello. Please enter the four-digit code shown on the page.",
    ],
    [
        "Tapez à nouveau le code à quatre chiffres affiché sur la page.",
        "Bitte geben Sie den vierstelligen Code von der Seite noch einmal ein.",
        "Digiti di nuovo il codice di quattro cifre indicato sulla pagina.",
        "Please enter the four-digit code shown on the page again.",
    ],
    [
        "Ce code n'est pas valable.",
        "Dieser Code ist nicht gültig.",
        "Questo codice non è valido.",
        "This code is not valid.",
    ],
    [
        "Nous n'avons pas reçu de code.",
        "Wir haben keinen Code erhalten.",
        "Non abbiamo ricevuto nessun codice.",
        "We did not receive a code.",
    ],
    [
        "Ce code n'est pas valable ou a expiré. Affichez à nouveau le numéro sur la page. Au revoir.",
        "Dieser Code ist nicht gültig oder abgelaufen. Bitte lassen Sie sich die Nummer auf der Seite erneut anzeigen. Auf Wiederhören.",
        "Questo codice non è valido o è scaduto. Visualizzi di nuovo il numero sulla pagina. Arrivederci.",
        "This code is not valid or has expired. Please display the number on the page again. Goodbye.",
    ],
    [
        "Ce numéro n'est plus attribué. Affichez à nouveau le numéro sur la page de l'annonce. Au revoir.",
        "Diese Nummer ist nicht mehr vergeben. Bitte lassen Sie sich die Nummer in der Anzeige erneut anzeigen. Auf Wiederhören.",
        "Questo numero non è più assegnato. Visualizzi di nuovo il numero sulla pagina dell'annuncio. Arrivederci.",
        "This number is no longer assigned. Please display the number on the listing's page again. Goodbye.",
    ],
    [
        "Merci de rester en ligne, le temps de la facturation.",
        "Bitte bleiben Sie in der Leitung, während die Zahlung verbucht wird.",
        "Resti in linea, per favore, il tempo della fatturazione.",
        "Please stay on the line while your payment is billed.",
    ],
    [
        "Votre paiement est confirmé. Merci et au revoir.",
        "Ihre Zahlung ist bestätigt. Vielen Dank und auf Wiederhören.",
        "Il suo pagamento è confermato. Grazie e arrivederci.",
        "Your payment is confirmed. Thank you, goodbye.",
    ],
    [
        "Merci. Le paiement n'est pas encore complet : rappelez et tapez le même code pour le terminer. Au revoir.",
        "Vielen Dank. Die Zahlung ist noch nicht vollständig: Bitte rufen Sie erneut an und geben Sie denselben Code ein. Auf Wiederhören.",
        "Grazie. Il pagamento non è ancora completo: richiami e digiti lo stesso codice per completarlo. Arrivederci.",
        "Thank you. The payment is not complete yet: call again and enter the same code to finish it. Goodbye.",
    ],
    [
        "Votre code d'accès est : {code}.",
        "Ihr Zugangscode lautet: {code}.",
        "Il suo codice di accesso è: {code}.",
        "Your access code is: {code}.",
    ],
    [
        "Merci. Il vous reste 1 appel à passer pour obtenir votre code.",
        "Vielen Dank. Es fehlt noch 1 Anruf, um Ihren Code zu erhalten.",
        "Grazie. Le manca ancora 1 chiamata per ottenere il codice.",
        "Thank you. 1 more call is needed to get your code.",
    ],
    [
        "Merci. Il vous reste {n} appels à passer pour obtenir votre code.",
        "Vielen Dank. Es fehlen noch {n} Anrufe, um Ihren Code zu erhalten.",
        "Grazie. Le mancano ancora {n} chiamate per ottenere il codice.",
        "Thank you. {n} more calls are needed to get your code.",
    ],
    [
        "Cette offre compte plusieurs appels depuis le même numéro : rappelez sans masquer votre numéro. Au revoir.",
        "Für dieses Angebot zählen mehrere Anrufe von derselben Nummer: Bitte rufen Sie mit sichtbarer Nummer erneut an. Auf Wiederhören.",
        "Questa offerta conta più chiamate dallo stesso numero: richiami senza nascondere il suo numero. Arrivederci.",
        "This offer counts several calls from the same number: please call again without hiding your number. Goodbye.",
    ],
];

/// A pool's voice: the language its prompts are spoken in (`locale`, for `<Say language>`)
/// and its wording, the shipped table's column with the pool's overrides on top.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voice {
    locale: String,
    lang: Lang,
    overrides: BTreeMap<Prompt, String>,
}

impl Voice {
    /// `language`: `fr`, `de`, `it`, `en`, or a tag starting with one (`de-CH`), spoken as
    /// given. `overrides`: prompt name → text; an unknown name, an unknown placeholder or an
    /// empty text is refused with the reason.
    pub fn parse(language: &str, overrides: &BTreeMap<String, String>) -> Result<Voice, String> {
        let primary = language
            .split('-')
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let lang = Lang::ALL
            .into_iter()
            .find(|l| l.code() == primary)
            .ok_or_else(|| {
                format!("language = {language:?}: prompts are shipped in fr, de, it and en (or a tag like \"de-CH\")")
            })?;
        let well_formed = language.len() <= 16
            && language
                .split('-')
                .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !well_formed {
            return Err(format!(
                "language = {language:?}: expected a language tag like \"fr\" or \"de-CH\""
            ));
        }
        let locale = match language.contains('-') {
            true => language.to_owned(),
            false => lang.default_locale().to_owned(),
        };
        let mut map = BTreeMap::new();
        for (name, text) in overrides {
            let prompt = Prompt::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Prompt::ALL.iter().map(|p| p.name()).collect();
                format!(
                    "prompts: unknown prompt {name:?} (known: {})",
                    known.join(", ")
                )
            })?;
            if text.trim().is_empty() {
                return Err(format!("prompts.{name}: empty"));
            }
            check_placeholders(prompt, text).map_err(|e| format!("prompts.{name}: {e}"))?;
            map.insert(prompt, text.clone());
        }
        Ok(Voice {
            locale,
            lang,
            overrides: map,
        })
    }

    /// The tag for `<Say language=…>`.
    pub fn locale(&self) -> &str {
        &self.locale
    }

    /// How many prompts the pool words its own way.
    pub fn overridden(&self) -> usize {
        self.overrides.len()
    }

    /// `prompt`'s text with its placeholders filled: `args` as (name, value); a `code` is
    /// read digit by digit.
    pub fn text(&self, prompt: Prompt, args: &[(&str, &str)]) -> String {
        let template = match self.overrides.get(&prompt) {
            Some(t) => t.as_str(),
            None => TABLE[prompt as usize][self.lang as usize],
        };
        let mut out = template.to_owned();
        for (name, value) in args {
            let value = match *name {
                "code" => spell_digits(value),
                _ => (*value).to_owned(),
            };
            out = out.replace(&format!("{{{name}}}"), &value);
        }
        out
    }
}

impl Default for Voice {
    fn default() -> Voice {
        Voice::parse("fr-FR", &BTreeMap::new()).expect("shipped")
    }
}

/// Digits one by one (`1 2 3 4`), as a voice reads a code in any language.
pub fn spell_digits(digits: &str) -> String {
    let spaced: Vec<String> = digits.chars().map(String::from).collect();
    spaced.join(" ")
}

/// Every `{name}` in `text` must be one of `prompt`'s placeholders.
fn check_placeholders(prompt: Prompt, text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "an unclosed '{'".to_owned())?;
        let name = &after[..close];
        if !prompt.placeholders().contains(&name) {
            return Err(match prompt.placeholders() {
                [] => format!("{{{name}}}: this prompt takes no placeholder"),
                known => format!("{{{name}}}: expected {}", braces(known)),
            });
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

fn braces(names: &[&str]) -> String {
    let b: Vec<String> = names.iter().map(|n| format!("{{{n}}}")).collect();
    b.join(" or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn every_prompt_has_every_language_and_only_its_placeholders() {
        for p in Prompt::ALL {
            assert_eq!(Prompt::parse(p.name()), Some(p));
            for l in Lang::ALL {
                let text = TABLE[p as usize][l as usize];
                assert!(!text.is_empty(), "{} {}", p.name(), l.code());
                check_placeholders(p, text)
                    .unwrap_or_else(|e| panic!("{} {}: {e}", p.name(), l.code()));
                for ph in p.placeholders() {
                    assert!(
                        text.contains(&format!("{{{ph}}}")),
                        "{} {} lacks {{{ph}}}",
                        p.name(),
                        l.code()
                    );
                }
            }
        }
        // The four columns differ: no language was left as another's copy.
        for p in Prompt::ALL {
            let row = TABLE[p as usize];
            for i in 0..4 {
                for j in i + 1..4 {
                    assert_ne!(row[i], row[j], "{}", p.name());
                }
            }
        }
    }

    #[test]
    fn a_language_picks_its_column_and_its_say_tag() {
        let de = Voice::parse("de", &none()).unwrap();
        assert_eq!(de.locale(), "de-DE");
        assert!(de.text(Prompt::AskCode, &[]).contains("Code"));
        let ch = Voice::parse("de-CH", &none()).unwrap();
        assert_eq!(ch.locale(), "de-CH");
        let it = Voice::parse("it-CH", &none()).unwrap();
        assert!(it.text(Prompt::Paid, &[]).contains("pagamento"));
        assert_eq!(
            it.text(Prompt::AccessCode, &[("code", "12345678")]),
            "Il suo codice di accesso è: 1 2 3 4 5 6 7 8."
        );
        for bad in ["es", "es-ES", "", "de-", "de CH", "fr-FR-xxxxxxxxxxxxxx"] {
            assert!(Voice::parse(bad, &none()).is_err(), "{bad}");
        }
    }

    #[test]
    fn overrides_replace_a_prompt_and_are_checked() {
        let mut o = BTreeMap::new();
        o.insert("hold".to_owned(), "Ne quittez pas.".to_owned());
        o.insert("calls_missing".to_owned(), "Encore {n}.".to_owned());
        let v = Voice::parse("fr", &o).unwrap();
        assert_eq!(v.text(Prompt::Hold, &[]), "Ne quittez pas.");
        assert_eq!(v.text(Prompt::CallsMissing, &[("n", "3")]), "Encore 3.");
        assert!(v.text(Prompt::Paid, &[]).contains("confirmé"));

        let refused = |name: &str, text: &str| {
            let mut o = BTreeMap::new();
            o.insert(name.to_owned(), text.to_owned());
            Voice::parse("fr", &o).unwrap_err()
        };
        assert!(refused("holdd", "x").contains("unknown prompt \"holdd\""));
        assert!(refused("hold", "  ").contains("empty"));
        assert!(refused("hold", "{n}").contains("takes no placeholder"));
        assert!(refused("access_code", "{cod}").contains("expected {code}"));
        assert!(refused("access_code", "{code").contains("unclosed"));
    }
}
