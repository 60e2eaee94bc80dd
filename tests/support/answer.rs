//! `Answer`: a whole HTTP answer read into memory, with the checks of the gateway's JSON
//! error shape that the API tests share.

use serde_json::Value;

/// What an endpoint answered.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    /// Reads `resp` to the end; every answer must carry `X-Request-Id`.
    pub async fn read(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        assert!(
            headers.contains_key("x-request-id"),
            "no X-Request-Id on {}",
            resp.url()
        );
        Answer {
            status,
            headers,
            text: resp.text().await.expect("read the body"),
        }
    }

    /// Sends `req` and reads the answer (panics if it cannot be sent).
    pub async fn send(req: reqwest::RequestBuilder) -> Answer {
        Answer::read(req.send().await.expect("send the request")).await
    }

    /// The value of header `name` as text, if the answer has one (the first of several).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("a text header value"))
    }

    /// Every value of header `name`, each field as sent.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("a text header value"))
            .collect()
    }

    /// The body as JSON (panics with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    /// Asserts an error answer: status, code, the shared shape, and a request id that
    /// matches the header; returns the body.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        let id = self.headers["x-request-id"].to_str().unwrap();
        assert_eq!(body["request_id"], id, "{body}");
        assert_eq!(
            self.headers["content-type"].to_str().unwrap(),
            "application/json"
        );
        body
    }
}
