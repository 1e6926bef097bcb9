//! Where the app token comes from: a fixed string, an async closure, or a [`TokenSource`]
//! the client borrows. Called once per round — the business-level re-login after a
//! technical reconnect, so an expired token is refreshed instead of replayed: before
//! routing when routers are configured (it is the Route bearer, and the HELLO token when
//! no login ticket is at hand), else before the HELLO.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What a [`TokenSource`] returns: a boxed future borrowing the source.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<String, TokenError>> + Send + 'a>>;

/// Why no token could be had; the round counts as failed (see [`crate::Setback::Token`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

impl TokenError {
    /// From any displayable error.
    pub fn new(e: impl fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// A token source the client keeps and borrows once per round (Route bearer, HELLO
/// fallback): implement it on your login service and pass it to
/// [`crate::Builder::token_source`].
///
/// ```
/// use switchyard_client::{TokenError, TokenFuture, TokenSource};
///
/// struct Login {
///     refresh_token: String,
/// }
///
/// impl TokenSource for Login {
///     fn token(&self) -> TokenFuture<'_> {
///         Box::pin(async move {
///             // e.g. an HTTP call to the app's login service with self.refresh_token
///             if self.refresh_token.is_empty() {
///                 return Err(TokenError::new("logged out"));
///             }
///             Ok(format!("access-for-{}", self.refresh_token))
///         })
///     }
/// }
/// ```
pub trait TokenSource: Send + Sync + 'static {
    /// A fresh app token for the next round.
    fn token(&self) -> TokenFuture<'_>;
}

/// An async closure as a source.
struct Closure<F>(F);

impl<F, Fut, E> TokenSource for Closure<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: fmt::Display,
{
    fn token(&self) -> TokenFuture<'_> {
        let fut = (self.0)();
        Box::pin(async move { fut.await.map_err(TokenError::new) })
    }
}

/// A fixed token.
struct Fixed(String);

impl TokenSource for Fixed {
    fn token(&self) -> TokenFuture<'_> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// The configured source, shared by the handle's config and the driver.
#[derive(Clone)]
pub(crate) struct TokenProvider(Arc<dyn TokenSource>);

impl TokenProvider {
    pub(crate) fn fixed(token: String) -> Self {
        Self(Arc::new(Fixed(token)))
    }

    pub(crate) fn closure<F, Fut, E>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        Self(Arc::new(Closure(f)))
    }

    pub(crate) fn source(s: impl TokenSource) -> Self {
        Self(Arc::new(s))
    }

    /// A future that owns what it needs, so the driver can race it against commands.
    pub(crate) fn fetch(
        &self,
    ) -> impl Future<Output = Result<String, TokenError>> + Send + 'static {
        let source = self.0.clone();
        async move { source.token().await }
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print what a token source holds.
        f.write_str("TokenProvider")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closures_sources_and_fixed_tokens_all_answer() {
        let t = TokenProvider::closure(|| async { Err::<String, _>("down") });
        assert_eq!(t.fetch().await, Err(TokenError("down".into())));
        assert_eq!(
            TokenProvider::fixed("x".into()).fetch().await,
            Ok("x".into())
        );
        struct S(u32);
        impl TokenSource for S {
            fn token(&self) -> TokenFuture<'_> {
                Box::pin(async move { Ok(format!("t{}", self.0)) })
            }
        }
        assert_eq!(TokenProvider::source(S(7)).fetch().await, Ok("t7".into()));
    }
}
