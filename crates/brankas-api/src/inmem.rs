//! A process-wide bound on request bytes held whole in memory: DICOM instances waiting to be
//! parsed (up to 512 MiB each) and photos waiting to be cleaned (up to 32 MiB each). Every
//! other attachment streams. Without it, a few hundred concurrent uploads of large instances
//! could exhaust the machine's memory; with it, an upload that would pass [`LIMIT`] waits (at
//! most [`WAIT`]) for others to finish, and then gets 503 with `Retry-After`.

use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::outcome::ApiError;

/// Bytes held whole in memory across all requests at most (in KiB permits).
pub const LIMIT: usize = 2 << 30;
/// How long an upload waits for room before it is refused.
const WAIT: Duration = Duration::from_secs(30);

static BUDGET: Semaphore = Semaphore::const_new(LIMIT / 1024);

/// The room one request holds; released when dropped.
#[derive(Default)]
pub(crate) struct Held {
    permit: Option<SemaphorePermit<'static>>,
}

impl Held {
    /// Reserves room for `bytes` more, waiting for it at most [`WAIT`].
    pub(crate) async fn grow(&mut self, bytes: usize) -> Result<(), ApiError> {
        self.grow_within(&BUDGET, bytes, WAIT).await
    }

    async fn grow_within(&mut self, budget: &'static Semaphore, bytes: usize, wait: Duration) -> Result<(), ApiError> {
        let n = u32::try_from(bytes.div_ceil(1024)).map_err(|_| busy())?;
        if n == 0 {
            return Ok(());
        }
        let p = match tokio::time::timeout(wait, budget.acquire_many(n)).await {
            Ok(Ok(p)) => p,
            _ => return Err(busy()),
        };
        match &mut self.permit {
            Some(h) => h.merge(p),
            None => self.permit = Some(p),
        }
        Ok(())
    }
}

fn busy() -> ApiError {
    let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "transient", "the server is holding too many large uploads in memory; retry shortly");
    e.retry_after = Some(30);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_bounded_and_released() {
        static SMALL: Semaphore = Semaphore::const_new(4);
        let w = Duration::from_millis(50);
        let mut a = Held::default();
        a.grow_within(&SMALL, 2048, w).await.unwrap();
        a.grow_within(&SMALL, 1024, w).await.unwrap();
        assert_eq!(SMALL.available_permits(), 1);
        let mut b = Held::default();
        let e = b.grow_within(&SMALL, 2048, w).await.unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        b.grow_within(&SMALL, 1, w).await.unwrap();
        drop(a);
        assert_eq!(SMALL.available_permits(), 3, "released on drop");
        b.grow_within(&SMALL, 3 * 1024, w).await.unwrap();
        assert_eq!(SMALL.available_permits(), 0);
    }
}
