//! The checks the core's inputs share, with the messages every dialect
//! shows (class-validator's wording, which AIWM's clients expect).

use crate::DomainError;

/// Short texts: names, categories, versions.
pub const MAX_SHORT: usize = 256;

/// Collects what is wrong with an input; `finish` answers all of it at once.
#[derive(Debug, Default)]
pub struct Checks {
    errors: Vec<String>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// A text that is required (when `required`), not blank when given,
    /// and at most `max` characters.
    pub fn text(&mut self, name: &str, value: &Option<String>, required: bool, max: usize) {
        match value {
            None if required => self.errors.push(format!("{name} must be a string")),
            None => {}
            Some(v) if v.trim().is_empty() && required => {
                self.errors.push(format!("{name} should not be empty"))
            }
            Some(v) if v.chars().count() > max => self.errors.push(format!(
                "{name} must be shorter than or equal to {max} characters"
            )),
            Some(_) => {}
        }
    }

    /// A text that may not be emptied once given (a change of a required field).
    pub fn not_blank(&mut self, name: &str, value: &Option<String>) {
        if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
            self.errors.push(format!("{name} should not be empty"));
        }
    }

    /// An identifier: 1 to 128 of letters, digits and `.-_:@`.
    pub fn key(&mut self, name: &str, value: &Option<String>, required: bool) {
        match value {
            None if required => self.errors.push(format!("{name} must be a string")),
            Some(v) if !is_key(v) => self.errors.push(format!(
                "{name} must contain only letters, digits and . - _ : @ (at most 128)"
            )),
            _ => {}
        }
    }

    /// One of the allowed values.
    pub fn one_of(&mut self, name: &str, value: &Option<String>, allowed: &[&str], required: bool) {
        match value {
            None if required => self.errors.push(format!("{name} must be a string")),
            Some(v) if !allowed.contains(&v.as_str()) => self.errors.push(format!(
                "{name} must be one of the following values: {}",
                allowed.join(", ")
            )),
            _ => {}
        }
    }

    /// Texts of a list, each at most `max` characters.
    pub fn texts(&mut self, name: &str, values: &Option<Vec<String>>, max: usize) {
        if values.iter().flatten().any(|v| v.chars().count() > max) {
            self.errors.push(format!(
                "each value in {name} must be shorter than or equal to {max} characters"
            ));
        }
    }

    /// A rule of the caller's own, in its own words.
    pub fn fail(&mut self, message: String) {
        self.errors.push(message);
    }

    pub fn finish(self) -> Result<(), DomainError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Invalid(self.errors))
        }
    }
}

pub fn is_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:@".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_the_rule() {
        let mut c = Checks::new();
        c.text("name", &None, true, 10);
        c.text("name", &Some(" ".into()), true, 10);
        c.text("name", &Some("x".repeat(11)), false, 10);
        c.key("toolId", &Some("a b".into()), false);
        c.one_of("type", &Some("x".into()), &["api", "function"], false);
        let Err(DomainError::Invalid(errors)) = c.finish() else {
            panic!("expected errors")
        };
        assert_eq!(
            errors,
            [
                "name must be a string",
                "name should not be empty",
                "name must be shorter than or equal to 10 characters",
                "toolId must contain only letters, digits and . - _ : @ (at most 128)",
                "type must be one of the following values: api, function",
            ]
        );
        assert!(Checks::new().finish().is_ok());
    }
}
