//! [`Cause`]: the error a provisioner call failed with, kept whole (its
//! source chain included) inside [`ProvisionError`](crate::ProvisionError)
//! and [`DeleteError`](crate::DeleteError).

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A boxed error of any type, as [`Cause::new`] and the error constructors
/// take it: every `std::error::Error + Send + Sync` converts into one, and so
/// do `String` and `&str`.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Why a provisioner call failed: any error, or just a message, with the
/// chain of sources behind it.
///
/// It is transparent: its [`Display`](fmt::Display) is the error's message,
/// and [`source`](Error::source) continues with the error's own source, so
/// walking the chain from a `Cause` visits the same errors as walking it from
/// the error itself. The alternate form (`{:#}`) and [`chain`](Cause::chain)
/// show the whole chain, `message: source: source's source`, the way the
/// engine writes it into events and logs.
///
/// Cloning is cheap (the error is shared), which keeps
/// [`ProvisionError`](crate::ProvisionError) `Clone`.
///
/// ```
/// use provisioner_core::Cause;
/// let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
/// let cause = Cause::context("creating /srv/pvc-1", io);
/// assert_eq!(cause.to_string(), "creating /srv/pvc-1");
/// assert_eq!(cause.chain(), "creating /srv/pvc-1: permission denied");
/// assert!(cause.downcast_ref::<std::io::Error>().is_none(), "the context is the error here");
/// let source = std::error::Error::source(&cause).expect("the io error");
/// assert!(source.downcast_ref::<std::io::Error>().is_some());
/// ```
#[derive(Clone)]
pub struct Cause {
    /// The error's message, taken once: `message()` hands out a `&str`, and
    /// equality compares text.
    message: Arc<str>,
    error: Arc<dyn Error + Send + Sync + 'static>,
}

impl Cause {
    /// The cause for `error`: any error (kept whole, its sources included), a
    /// `String` or a `&str`. A `Cause` given here is returned as it is, not
    /// wrapped again.
    ///
    /// ```
    /// use provisioner_core::Cause;
    /// let from_error = Cause::new(std::io::Error::other("disk on fire"));
    /// let from_text = Cause::new("disk on fire");
    /// assert_eq!(from_error, from_text);
    /// assert_eq!(Cause::new(from_error.clone()).chain(), "disk on fire");
    /// ```
    pub fn new(error: impl Into<BoxError>) -> Self {
        match error.into().downcast::<Cause>() {
            Ok(cause) => *cause,
            Err(error) => Cause { message: error.to_string().into(), error: Arc::from(error) },
        }
    }

    /// The cause whose message is `context` (what was being done) and whose
    /// [`source`](Error::source) is `source` (the error it failed with): the
    /// chain reads `context: source: ...`. Use it where a message would
    /// otherwise be `format!("{context}: {e}")`.
    ///
    /// ```
    /// use provisioner_core::Cause;
    /// let cause = Cause::context("removing /srv/pvc-1", std::io::Error::other("device busy"));
    /// assert_eq!(cause.message(), "removing /srv/pvc-1");
    /// assert_eq!(format!("{cause:#}"), "removing /srv/pvc-1: device busy");
    /// ```
    pub fn context(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        let context = Context { message: context.into(), source: source.into() };
        Cause { message: context.message.as_str().into(), error: Arc::new(context) }
    }

    /// The message of the error itself, without its sources.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by the message of each source, separated by
    /// `": "`: what events and logs show. A source whose message the one
    /// before already ends with (an error that prints its source itself) is
    /// not repeated.
    pub fn chain(&self) -> String {
        format!("{self:#}")
    }

    /// The messages of the chain, this cause's first, then each source's.
    pub fn messages(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.message.to_string()).chain(Sources::of(self).map(|e| e.to_string()))
    }

    /// The error this cause was made from, if it is a `T` (for
    /// [`Cause::context`], the context is the error: look for the original in
    /// the [`source`](Error::source) chain).
    pub fn downcast_ref<T: Error + 'static>(&self) -> Option<&T> {
        self.error.downcast_ref::<T>()
    }

    /// The first error of type `T` in the chain, this cause's own error
    /// included.
    ///
    /// ```
    /// use provisioner_core::Cause;
    /// let cause = Cause::context("writing the ledger", std::io::Error::other("no space left on device"));
    /// assert!(cause.find::<std::io::Error>().is_some());
    /// ```
    pub fn find<T: Error + 'static>(&self) -> Option<&T> {
        let own: &(dyn Error + 'static) = &*self.error;
        std::iter::once(own).chain(Sources::of(self)).find_map(|e| e.downcast_ref::<T>())
    }
}

/// The sources of an error, nearest first.
struct Sources<'a> {
    next: Option<&'a (dyn Error + 'static)>,
}

impl<'a> Sources<'a> {
    fn of(error: &'a (dyn Error + 'static)) -> Self {
        Sources { next: error.source() }
    }
}

impl<'a> Iterator for Sources<'a> {
    type Item = &'a (dyn Error + 'static);
    fn next(&mut self) -> Option<Self::Item> {
        let current = self.next?;
        self.next = current.source();
        Some(current)
    }
}

/// Writes `message` and then each source of `error` (`: `-separated),
/// skipping a source whose text the previous message already ends with.
pub(crate) fn write_chain(f: &mut fmt::Formatter<'_>, message: &str, error: &(dyn Error + 'static)) -> fmt::Result {
    f.write_str(message)?;
    let mut previous = message.to_string();
    for source in Sources::of(error) {
        let text = source.to_string();
        if !text.is_empty() && !previous.ends_with(&text) {
            write!(f, ": {text}")?;
        }
        previous = text;
    }
    Ok(())
}

impl fmt::Display for Cause {
    /// The message; with `{:#}`, the message and every source's.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() { write_chain(f, &self.message, self) } else { f.write_str(&self.message) }
    }
}

impl fmt::Debug for Cause {
    /// The whole chain as a quoted string; with `{:#?}`, the error's own
    /// `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() { fmt::Debug::fmt(&*self.error, f) } else { fmt::Debug::fmt(&self.chain(), f) }
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.error.source()
    }
}

/// Two causes are equal when they read the same: the same message and the
/// same messages of their sources, in order. Errors have no equality of
/// their own, so text is what can be compared; a cause made from a string
/// equals one made from an error with that message and no source.
impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message && self.messages().skip(1).eq(other.messages().skip(1))
    }
}

impl Eq for Cause {}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Cause::new(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Cause::new(message)
    }
}

impl From<BoxError> for Cause {
    fn from(error: BoxError) -> Self {
        Cause::new(error)
    }
}

/// What was being done, over the error it failed with.
#[derive(Debug)]
struct Context {
    message: String,
    source: BoxError,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::error::Error;
    use std::io;

    use super::Cause;
    use crate::{DeleteError, ProvisionError};

    #[derive(Debug, thiserror::Error)]
    pub(crate) enum Transport {
        #[error("dispatch failure")]
        Dispatch(#[source] io::Error),
    }

    /// A backend's error with two levels below it, the way an SDK reports one.
    #[derive(Debug, thiserror::Error)]
    #[error("could not create file system")]
    pub(crate) struct Backend {
        #[source]
        source: Transport,
    }

    pub(crate) fn backend_error() -> Backend {
        Backend { source: Transport::Dispatch(io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused")) }
    }

    /// The whole chain of [`backend_error`], as events show it.
    pub(crate) const FULL: &str = "could not create file system: dispatch failure: connection refused";

    /// The messages of the sources of `e`, nearest first.
    fn sources(e: &(dyn Error + 'static)) -> Vec<String> {
        std::iter::successors(e.source(), |&s| s.source()).map(ToString::to_string).collect()
    }

    #[test]
    fn a_final_error_keeps_the_source_chain_of_the_backend_error() {
        let err = ProvisionError::failed(backend_error());
        assert!(matches!(err, ProvisionError::Final(_)), "{err:?}");
        assert_eq!(err.message(), "could not create file system");
        assert_eq!(err.chain(), FULL);
        assert_eq!(sources(&err), ["dispatch failure", "connection refused"]);
        let last = std::iter::successors(err.source(), |&s| s.source()).last().expect("a source");
        let io = last.downcast_ref::<io::Error>().expect("the io::Error itself, not its text");
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
        let cause = err.cause().expect("a cause");
        assert!(cause.downcast_ref::<Backend>().is_some(), "the backend's error is kept whole");
        assert!(cause.find::<Transport>().is_some());
        assert!(cause.find::<io::Error>().is_some());
    }

    #[test]
    fn every_constructor_keeps_the_source_chain() {
        let provision = [
            ProvisionError::in_progress(backend_error()),
            ProvisionError::stalled(backend_error()),
            ProvisionError::retry_after(backend_error(), std::time::Duration::from_secs(5)),
            ProvisionError::failed(backend_error()),
            ProvisionError::reschedule(backend_error()),
            ProvisionError::infeasible(backend_error()),
        ];
        for err in &provision {
            assert_eq!(err.chain(), FULL, "{err:?}");
            assert_eq!(sources(err), ["dispatch failure", "connection refused"], "{err:?}");
        }
        for err in [DeleteError::in_use(backend_error()), DeleteError::failed(backend_error())] {
            assert_eq!(err.message(), "could not create file system");
            assert_eq!(err.chain(), FULL, "{err:?}");
            assert_eq!(sources(&err), ["dispatch failure", "connection refused"], "{err:?}");
        }
    }

    #[test]
    fn a_chain_printer_shows_each_message_once() {
        let err = ProvisionError::failed(backend_error());
        assert_eq!(err.to_string(), "failed: could not create file system");
        // What `anyhow`'s `{:#}` and tracing's error fields print: the
        // error's Display, then each source's.
        let printed: Vec<String> = std::iter::once(err.to_string()).chain(sources(&err)).collect();
        assert_eq!(printed.join(": "), format!("failed: {FULL}"));
        assert_eq!(format!("{err:#}"), format!("failed: {FULL}"));
        let del = DeleteError::in_use(backend_error());
        assert_eq!(format!("{del}"), "in use: could not create file system");
        assert_eq!(format!("{del:#}"), format!("in use: {FULL}"));
    }

    #[test]
    fn context_is_the_message_and_the_error_its_source() {
        let io = io::Error::new(io::ErrorKind::PermissionDenied, "permission denied");
        let err = ProvisionError::failed(Cause::context("creating /srv/pvc-1", io));
        assert_eq!(err.message(), "creating /srv/pvc-1");
        assert_eq!(err.chain(), "creating /srv/pvc-1: permission denied");
        let source = err.source().expect("the io::Error");
        assert_eq!(source.downcast_ref::<io::Error>().map(io::Error::kind), Some(io::ErrorKind::PermissionDenied));
        // Context over a nested error keeps every level below it.
        let nested = Cause::context("provisioning pvc-1", backend_error());
        assert_eq!(nested.chain(), format!("provisioning pvc-1: {FULL}"));
        assert_eq!(
            nested.messages().collect::<Vec<_>>(),
            ["provisioning pvc-1", "could not create file system", "dispatch failure", "connection refused"]
        );
    }

    #[test]
    fn errors_built_from_a_string_compare_by_message() {
        let from_str = ProvisionError::failed("no space");
        assert_eq!(from_str, ProvisionError::Final("no space".into()));
        assert_eq!(from_str, ProvisionError::failed(String::from("no space")));
        assert_eq!(from_str, ProvisionError::failed(io::Error::other("no space")), "same text, no source");
        assert_eq!(from_str.clone(), from_str);
        assert_ne!(from_str, ProvisionError::failed("no room"));
        assert_ne!(from_str, ProvisionError::in_progress("no space"), "the variant still counts");
        assert_ne!(
            from_str,
            ProvisionError::failed(Cause::context("no space", io::Error::other("disk full"))),
            "a source is part of the text"
        );
        assert_eq!(DeleteError::failed("denied"), DeleteError::Failed("denied".into()));
        assert_eq!(ProvisionError::failed(backend_error()), ProvisionError::failed(backend_error()));
    }

    #[test]
    fn a_cause_given_to_a_constructor_is_not_wrapped_again() {
        let cause = Cause::new(backend_error());
        let err = ProvisionError::failed(cause.clone());
        let inner = err.cause().expect("a cause");
        assert!(inner.downcast_ref::<Backend>().is_some(), "still the backend's error, not a Cause in a Cause");
        assert_eq!(inner.chain(), FULL);
        assert_eq!(Cause::from(Box::new(backend_error()) as super::BoxError).chain(), FULL);
    }

    #[test]
    fn an_error_that_prints_its_source_is_not_repeated_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the ledger: {source}")]
        struct Ledger {
            source: io::Error,
        }
        let err = ProvisionError::failed(Ledger { source: io::Error::other("input/output error") });
        assert_eq!(err.chain(), "reading the ledger: input/output error");
        assert_eq!(sources(&err), ["input/output error"], "the source is still there to walk");
    }

    #[test]
    fn ignored_answers_have_no_cause() {
        assert!(ProvisionError::Ignored.cause().is_none());
        assert!(ProvisionError::Ignored.source().is_none());
        assert_eq!(ProvisionError::Ignored.chain(), "ignored by the provisioner");
        assert!(DeleteError::Ignored.cause().is_none());
        assert_eq!(DeleteError::Ignored.to_string(), "ignored");
    }

    #[test]
    fn debug_output_shows_the_whole_chain() {
        let shown = format!("{:?}", ProvisionError::failed(backend_error()));
        assert_eq!(shown, format!("Final({FULL:?})"));
        assert!(format!("{:#?}", Cause::new(backend_error())).contains("ConnectionRefused"), "the error's own Debug");
    }
}
