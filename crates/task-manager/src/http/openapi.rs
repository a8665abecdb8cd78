//! The API's OpenAPI 3.1 description, served at `/openapi.json` and browsed at `/docs`
//! (Swagger UI, vendored in the binary). The operations come from the handlers' own
//! `#[utoipa::path]` annotations, registered with the routes by `utoipa_axum`, so a route
//! cannot exist without its description; the workers' callback is left out.

use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};

use task_protocol::{ErrorBody, TaskView};

/// What is not in a handler's annotation: the title, the tags, the token scheme.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Play-count aggregator",
        description = "Upload a CSV `Song,Date,Number of Plays`; the task sums the plays per \
            (song, date), sorted by song then date; download the result when the task is DONE. \
            Every error answers `{\"error\": \"...\"}`.",
    ),
    tags(
        (name = "tasks", description = "Uploads, tasks and results"),
        (name = "operations", description = "Health and metrics"),
    ),
    modifiers(&BearerToken),
)]
pub struct ApiDoc;

/// The `bearer` scheme of `API_TOKEN` (and `METRICS_TOKEN`).
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// A 409's body: the error beside the task's fields.
#[derive(Serialize, ToSchema)]
pub struct TaskConflict {
    pub error: String,
    #[serde(flatten)]
    pub task: TaskView,
}

/// The errors of every route about one task.
#[derive(IntoResponses)]
#[allow(dead_code)] // a description: the handlers answer `ApiError`
pub enum TaskErrors {
    /// Malformed task id or query
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Missing or wrong token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// No such task
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The database or the storage is unreachable
    #[response(status = 503, headers(("Retry-After" = u32, description = "Seconds to wait")))]
    Unavailable(ErrorBody),
}
