//! What the layers record in a response's [`http::Extensions`].
//!
//! Read them with `response.extensions().get::<Attempts>()`.

/// How many times the request was sent upstream before this response came back,
/// the first attempt included. Inserted by the retry layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempts(pub u32);

impl Attempts {
    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }
}
