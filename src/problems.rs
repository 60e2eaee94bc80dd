//! Problems found while validating configuration, each with its place in the file
//! (`routes[2].cors.allow_origins[0]: ...`), collected so that an operator sees every
//! mistake at once. Every section's validation, wherever it lives, writes into one of these.

/// Collects problems while converting; each one is `place: message`.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records one problem at `place`.
    pub fn push(&mut self, place: impl std::fmt::Display, message: impl std::fmt::Display) {
        self.0.push(format!("{place}: {message}"));
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The collected messages, in file order.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}
