//! Validation of names and addresses that arrive from the network or a config file.
//!
//! Every check names the field it rejects, so a caller can fix its request without reading the
//! server's logs. The rules follow RocketMQ's (`Validators.checkTopic`): names of at most 127
//! characters from `[A-Za-z0-9_%|-]`.

use std::fmt;

/// The longest topic, group or cluster name accepted.
pub const NAME_MAX_LEN: usize = 127;
/// The longest `host:port` address accepted.
pub const ADDR_MAX_LEN: usize = 255;

/// A rejected field: which one and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    pub field: String,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidField {}

impl From<InvalidField> for tonic::Status {
    fn from(e: InvalidField) -> Self {
        crate::Error::from(e).into()
    }
}

/// Checks a topic, group or cluster name.
pub fn name(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    if value.len() > NAME_MAX_LEN {
        return Err(InvalidField::new(
            field,
            format!("is {} bytes long, the limit is {NAME_MAX_LEN}", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '%' | '|')))
    {
        return Err(InvalidField::new(
            field,
            format!("contains {c:?}; allowed are letters, digits and _ - % |"),
        ));
    }
    Ok(())
}

/// Checks a `host:port` address that clients or peers will dial.
pub fn addr(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    if value.len() > ADDR_MAX_LEN {
        return Err(InvalidField::new(
            field,
            format!("is {} bytes long, the limit is {ADDR_MAX_LEN}", value.len()),
        ));
    }
    let bad = |why: &str| Err(InvalidField::new(field, format!("{value:?} {why}")));
    let Some((host, port)) = value.rsplit_once(':') else {
        return bad("is not host:port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return bad("has no valid port (1-65535)"),
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return bad("has no host");
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let hostname_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
    });
    if !hostname_ok {
        return bad("has an invalid host name");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("topic", "TopicTest").is_ok());
        assert!(name("topic", "%RETRY%group_1|x-y").is_ok());
        assert_eq!(name("topic", "").unwrap_err().field, "topic");
        assert!(name("topic", &"a".repeat(NAME_MAX_LEN)).is_ok());
        assert!(name("topic", &"a".repeat(NAME_MAX_LEN + 1)).is_err());
        let e = name("group", "a b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `group`: contains ' '; allowed are letters, digits and _ - % |"
        );
    }

    #[test]
    fn addrs() {
        for ok in ["127.0.0.1:9876", "localhost:1", "[::1]:10911", "broker-a.example:443"] {
            assert!(addr("client_addr", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            ":80",
            "a..b:1",
            "a b:1",
        ] {
            let e = addr("client_addr", bad).unwrap_err();
            assert_eq!(e.field, "client_addr", "{bad}");
        }
    }
}
