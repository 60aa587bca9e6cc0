//! What the retry layer records in a response's [`http::Extensions`].

use http::Extensions;

/// How many times the request was sent upstream before this response came back, the
/// first attempt included.
///
/// The retry layer inserts it only when it sent a request more than once, so that the
/// success path allocates nothing; read it with [`Attempts::of`], which counts a
/// response without it as one attempt.
///
/// ```
/// use brownout_retry::Attempts;
///
/// let mut response = http::Response::new(());
/// assert_eq!(Attempts::of(response.extensions()), 1);
/// response.extensions_mut().insert(Attempts(3));
/// assert_eq!(Attempts::of(response.extensions()), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempts(pub u32);

impl Attempts {
    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The attempt count recorded in `extensions`: one when none was recorded.
    pub fn of(extensions: &Extensions) -> u32 {
        extensions.get::<Attempts>().map_or(1, |a| a.0)
    }
}
