//! A message with files: the body of `POST /conversations/{id}/messages` and
//! `POST /me/conversations/{id}/messages` is either JSON (the message alone) or
//! `multipart/form-data` with a `message` part (the same JSON) and any number of `file` parts.
//! Each file is read as it arrives and refused (413, naming the file and the limit) once it
//! passes `TIDINGS_ATTACHMENT_MAX`; the whole request is bounded by `TIDINGS_MAIL_MAX`.

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use tidings_common::attachments::{File, human_size};
use tidings_common::inbound::FILES_MAX;

use crate::error::{ApiError, Body, parse_json};
use crate::state::AppState;

/// The message's fields and its files.
pub struct WithFiles<T> {
    pub fields: T,
    pub files: Vec<File>,
}

fn too_large(message: String) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message,
        field: Some("file".into()),
    }
}

fn bad_form(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_field("file", format!("multipart body: {message}"))
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for WithFiles<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| {
                t.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
            });
        if !multipart {
            let Body(fields) = Body::<T>::from_request(req, state).await?;
            return Ok(WithFiles {
                fields,
                files: Vec::new(),
            });
        }
        let max = state.config.attachment_max;
        let mut form = Multipart::from_request(req, state)
            .await
            .map_err(|e| bad_form(e.body_text()))?;
        let (mut fields, mut files) = (None, Vec::new());
        while let Some(mut part) = form.next_field().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large(format!(
                    "the request is over the {} limit (TIDINGS_MAIL_MAX)",
                    human_size(state.config.inbound_max_bytes as i64)
                ))
            } else {
                bad_form(e.body_text())
            }
        })? {
            let name = part.name().unwrap_or_default().to_string();
            if name == "message" {
                let bytes = part.bytes().await.map_err(|e| bad_form(e.body_text()))?;
                if bytes.len() > crate::error::JSON_MAX {
                    return Err(too_large("the message part is over 2 MiB".into()));
                }
                fields = Some(parse_json::<T>(&bytes)?);
                continue;
            }
            if name != "file" {
                return Err(bad_form(format!(
                    "unknown part {name:?}: expected one `message` part and `file` parts"
                )));
            }
            if files.len() >= FILES_MAX {
                return Err(bad_form(format!("at most {FILES_MAX} files per message")));
            }
            let file_name = part.file_name().map(str::to_string);
            let declared = part.content_type().map(str::to_string);
            let mut data = Vec::new();
            while let Some(chunk) = part.chunk().await.map_err(|e| bad_form(e.body_text()))? {
                if data.len() + chunk.len() > max {
                    return Err(too_large(format!(
                        "file {:?} is over the {} limit per file (TIDINGS_ATTACHMENT_MAX)",
                        file_name.as_deref().unwrap_or("(unnamed)"),
                        human_size(max as i64)
                    )));
                }
                data.extend_from_slice(&chunk);
            }
            files.push(File::new(
                data,
                file_name.as_deref(),
                declared.as_deref(),
                None,
                false,
            ));
        }
        let Some(fields) = fields else {
            return Err(ApiError::bad_field(
                "message",
                "message: a multipart body needs a `message` part (the message as JSON)",
            ));
        };
        Ok(WithFiles { fields, files })
    }
}

/// A message with files, as `multipart/form-data`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct MessageUpload {
    /// The message, as the JSON body would be.
    message: String,
    /// Each file, as a part named `file` with its file name and type.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
}
