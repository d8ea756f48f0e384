//! Masking of sensitive values before they reach the audit log. Works on
//! characters, not bytes, so Chinese names and full-width digits are safe;
//! never fails: a value too short for its pattern is masked whole.

use serde_json::Value;

/// How a value is masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// `330***********1234`: first 3 and last 4 kept.
    IdCard,
    /// `138****1234`: first 3 and last 4 kept.
    Phone,
    /// `********`, whatever the value.
    Password,
    /// First 6 and last 4 kept.
    BankCard,
    /// `z***@company.com`: first character of the local part and the domain kept.
    Email,
    /// `张*` for two characters, `张*三` for more: first and last kept.
    Name,
}

/// Field names masked as passwords whoever declared what.
const SECRET_KEYS: [&str; 4] = ["password", "secret", "token", "authorization"];

/// Keeps `head` and `tail` characters, stars the rest (all of it when the
/// value is too short to keep that much).
fn keep(value: &str, head: usize, tail: usize) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= head + tail {
        return "*".repeat(chars.len().max(1));
    }
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < head || i >= chars.len() - tail {
                *c
            } else {
                '*'
            }
        })
        .collect()
}

/// Masks one string.
pub fn mask(value: &str, strategy: Strategy) -> String {
    match strategy {
        Strategy::Password => "********".into(),
        Strategy::IdCard | Strategy::Phone => keep(value, 3, 4),
        Strategy::BankCard => keep(value, 6, 4),
        Strategy::Email => match value.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() => {
                let first: String = local.chars().take(1).collect();
                format!("{first}***@{domain}")
            }
            _ => keep(value, 0, 0),
        },
        Strategy::Name => {
            let chars: Vec<char> = value.chars().collect();
            match chars.len() {
                0 | 1 => "*".into(),
                2 => format!("{}*", chars[0]),
                n => format!("{}{}{}", chars[0], "*".repeat(n - 2), chars[n - 1]),
            }
        }
    }
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.contains(s))
}

/// Masks a JSON document in place: `declared` names fields (at any depth) and
/// their strategies; fields named like a secret are masked as passwords.
/// Non-string values of masked fields are masked through their text.
pub fn mask_json(value: &mut Value, declared: &[(&str, Strategy)]) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let strategy = if is_secret_key(key) {
                    Some(Strategy::Password)
                } else {
                    declared.iter().find(|(k, _)| k == key).map(|(_, s)| *s)
                };
                match (strategy, &*v) {
                    (Some(s), Value::String(text)) => *v = Value::String(mask(text, s)),
                    (Some(_), Value::Null) => {}
                    (Some(s), Value::Array(_) | Value::Object(_)) if s == Strategy::Password => {
                        *v = Value::String(mask("", s))
                    }
                    (Some(s), Value::Number(_) | Value::Bool(_)) => {
                        *v = Value::String(mask(&v.to_string(), s))
                    }
                    _ => mask_json(v, declared),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_json(v, declared)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::Strategy::*;
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn strategies_match_the_documented_shapes() {
        assert_eq!(mask("330102199001011234", IdCard), "330***********1234");
        assert_eq!(mask("13812341234", Phone), "138****1234");
        assert_eq!(mask("anything", Password), "********");
        assert_eq!(mask("6222021234567890123", BankCard), "622202*********0123");
        assert_eq!(mask("zhangsan@company.com", Email), "z***@company.com");
        assert_eq!(mask("张三", Name), "张*");
        assert_eq!(mask("张小三", Name), "张*三");
        assert_eq!(mask("欧阳小明", Name), "欧**明");
        assert_eq!(
            mask("１３８１２３４１２３４", Phone),
            "１３８****１２３４",
            "full-width digits"
        );
    }

    #[test]
    fn short_values_are_masked_whole() {
        assert_eq!(mask("123", Phone), "***");
        assert_eq!(mask("", IdCard), "*");
        assert_eq!(mask("@x", Email), "**");
        assert_eq!(mask("张", Name), "*");
    }

    #[test]
    fn json_masks_declared_fields_and_secret_names_at_any_depth() {
        let mut v = json!({
            "email": "li@example.com",
            "name": "李四",
            "password": "hunter2",
            "nested": {"api_token": "abc", "list": [{"email": "wang@x.cn"}]},
            "other": "kept",
            "smtp_password": null
        });
        mask_json(&mut v, &[("email", Email), ("name", Name)]);
        assert_eq!(
            v,
            json!({
                "email": "l***@example.com",
                "name": "李*",
                "password": "********",
                "nested": {"api_token": "********", "list": [{"email": "w***@x.cn"}]},
                "other": "kept",
                "smtp_password": null
            })
        );
    }

    fn strategy() -> impl proptest::strategy::Strategy<Value = super::Strategy> {
        prop_oneof![
            Just(IdCard),
            Just(Phone),
            Just(Password),
            Just(BankCard),
            Just(Email),
            Just(Name)
        ]
    }

    proptest! {
        #[test]
        fn masking_never_panics_and_never_reveals_the_middle(value in "\\PC*", s in strategy()) {
            let masked = mask(&value, s);
            prop_assert!(!masked.is_empty());
            let chars: Vec<char> = masked.chars().collect();
            let (head, tail) = match s {
                IdCard | Phone => (3, 4),
                BankCard => (6, 4),
                Name => (1, 1),
                Password | Email => (0, 0),
            };
            if s == Password {
                prop_assert_eq!(&masked, "********");
            } else if s != Email {
                prop_assert_eq!(chars.len(), value.chars().count().max(1));
                if chars.len() > head + tail {
                    prop_assert!(chars[head..chars.len() - tail].iter().all(|c| *c == '*'));
                } else if s != Name {
                    prop_assert!(chars.iter().all(|c| *c == '*'));
                }
            }
        }

        #[test]
        fn json_masking_never_panics(key in "\\PC{0,12}", value in "\\PC*", n in any::<i64>()) {
            let mut v = json!({ key.clone(): value, "n": n, "password": n, "deep": [{ key: [value_of(n)] }] });
            mask_json(&mut v, &[("n", Phone)]);
            prop_assert_eq!(&v["password"], &json!("********"));
        }
    }

    fn value_of(n: i64) -> Value {
        json!(n)
    }
}
