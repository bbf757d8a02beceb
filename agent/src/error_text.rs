//! Errors as one line of text for logs and for supd: the error and its
//! causes, each said once. Its own module (not the crate root) because
//! config, the session and the binary all use it, and none of them should
//! depend on the crate root that wires them together.

/// An error and its causes on one line. Transport errors in particular say
/// only "transport error" at the top; the cause that helps an operator
/// (connection refused, no such host) is further down the chain.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    append_causes(&mut text, err.source());
    text
}

/// Appends `first` and its sources to `text`, leaving out what is already
/// said: many errors repeat their source's message in their own, or start
/// their message with the text that wraps them.
pub fn append_causes(text: &mut String, first: Option<&(dyn std::error::Error + 'static)>) {
    let mut source = first;
    while let Some(cause) = source {
        append_cause(text, &cause.to_string());
        source = cause.source();
    }
}

fn append_cause(text: &mut String, cause: &str) {
    if cause.is_empty() || text.contains(cause) {
        return;
    }
    let overlap = text
        .char_indices()
        .map(|(at, _)| at)
        .filter(|&at| at == 0 || text[..at].ends_with(": "))
        .find(|&at| cause.starts_with(&text[at..]));
    match overlap {
        Some(at) => {
            let rest = cause[text.len() - at..].to_owned();
            text.push_str(&rest);
        }
        None => {
            text.push_str(": ");
            text.push_str(cause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct E {
        message: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    fn e(message: &'static str, source: Option<E>) -> E {
        E {
            message,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn error_chain_keeps_every_cause_once() {
        let refused = e(
            "transport error",
            Some(e("tcp connect error", Some(e("Connection refused", None)))),
        );
        assert_eq!(
            error_chain(&refused),
            "transport error: tcp connect error: Connection refused"
        );
        // A message that already quotes its source, and a source that
        // elaborates the tail of the message.
        let repeated = e("h2 error: broken pipe", Some(e("broken pipe", None)));
        assert_eq!(error_chain(&repeated), "h2 error: broken pipe");
        let elaborated = e(
            "h2 protocol error: error reading a body",
            Some(e("error reading a body: stream closed", None)),
        );
        assert_eq!(
            error_chain(&elaborated),
            "h2 protocol error: error reading a body: stream closed"
        );
    }
}
