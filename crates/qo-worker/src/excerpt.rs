//! Bounded excerpts of response bodies, for dead-letter reasons.

/// At most `max` bytes of `body` as text: cut on a character boundary, invalid UTF-8 replaced,
/// control characters (newlines included) turned into spaces, surrounding space trimmed.
pub fn excerpt(body: &[u8], max: usize) -> String {
    // A few bytes past the limit so that a character cut by it decodes whole, then is dropped
    // by the cut below rather than turned into a replacement character.
    let window = &body[..body.len().min(max.saturating_add(4))];
    let text: String = String::from_utf8_lossy(window)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text[..cut].trim().to_string()
}

/// The dead-letter reason for an HTTP answer: `HTTP <status>: <excerpt>` (or `HTTP <status>`
/// for an empty body).
/// (the text of a [`qo_core::Reason::FinalStatus`] or [`qo_core::Reason::ServerError`]).
pub fn http_reason(status: u16, body: &[u8], max: usize) -> String {
    qo_core::Reason::FinalStatus {
        status,
        excerpt: excerpt(body, max),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_cut_on_a_char_boundary() {
        assert_eq!(excerpt(b"not found", 512), "not found");
        assert_eq!(excerpt(b"abcdefgh", 3), "abc");
        // RESPONSE_EXCERPT_BYTES=0 keeps nothing of the answer.
        assert_eq!(excerpt(b"token=s3cret", 0), "");
        assert!(!http_reason(404, b"token=s3cret", 0).contains("s3cret"));
        // 'é' is two bytes: a limit inside it drops it whole.
        let body = "abcdé-rest".as_bytes();
        assert_eq!(excerpt(body, 5), "abcd");
        assert_eq!(excerpt(body, 6), "abcdé");
        for max in 0..20 {
            let e = excerpt("ééé€€€😀😀".as_bytes(), max);
            assert!(e.len() <= max, "{max}: {e}");
            assert!(!e.contains('\u{FFFD}'), "{max}: {e}");
        }
    }

    #[test]
    fn invalid_utf8_and_control_characters() {
        assert_eq!(excerpt(b"a\xffb", 10), "a\u{FFFD}b");
        assert_eq!(
            excerpt(b"{\n  \"error\": \"x\"\r\n}", 100),
            "{   \"error\": \"x\"  }"
        );
        let long_invalid = [0xffu8; 100];
        assert!(excerpt(&long_invalid, 10).len() <= 10);
    }

    #[test]
    fn reasons() {
        assert_eq!(http_reason(404, b"", 512), "HTTP 404");
        assert_eq!(http_reason(404, b"no such item", 7), "HTTP 404: no such");
    }
}
