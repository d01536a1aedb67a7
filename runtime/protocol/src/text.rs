//! Bounded text: what a producer or a task sends may be any size, what the
//! host stores and logs of it is not.

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` cut to at most `max` bytes (on a char boundary), saying how much
/// was cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let head = prefix(s, max);
    format!("{head}… ({} bytes cut)", s.len() - head.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_splits_a_character() {
        assert_eq!(prefix("ééé", 3), "é");
        assert_eq!(prefix("abc", 10), "abc");
        assert_eq!(clip("ééé", 3), "é… (4 bytes cut)");
        assert_eq!(clip("abc", 3), "abc");
    }
}
