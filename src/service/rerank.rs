//! `search`'s optional reranker: the best candidates of the words-and-meaning ranking,
//! put in order by one model call through sandgate's own router (`[mcp.search]
//! rerank`). The call is the caller's, like any `model.chat`: their policies decide
//! whether they may use the model, it is budgeted and rate-limited as theirs and
//! recorded in the ledger under their name. Whatever goes wrong (the model is not
//! theirs, over budget, failing, slow, or answers with no candidate), `search` keeps
//! its own ranking and says why.

use std::sync::Arc;

use super::Service;
use crate::auth::Principal;
use crate::model::CallContext;

/// What the model is told.
const INSTRUCTIONS: &str = "You rank software tools for a request. Reply with the numbers of the tools that \
     fit the request, best first, as JSON: {\"ranking\": [3, 1, 2]}. Leave out tools that do not fit. Reply \
     with the JSON only.";

/// One candidate, as the model is shown it: its name and what it does.
pub struct Candidate<'a> {
    pub name: &'a str,
    pub description: &'a str,
}

/// A reranking: the candidates' indices, best first (every candidate, those the model
/// named first), and the model that answered.
#[derive(Debug)]
pub struct Reranked {
    pub order: Vec<usize>,
    pub model: String,
}

/// The candidate numbers (1-based) in `reply`, in order, each once: the indices of
/// the candidates it names, then the rest in their first order. `None` when it names
/// none of them.
pub fn order_from(reply: &str, candidates: usize) -> Option<Vec<usize>> {
    let mut order: Vec<usize> = Vec::new();
    let numbers = reply.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty() && n.len() < 4);
    for index in numbers.filter_map(|n| n.parse::<usize>().ok()).filter(|n| (1..=candidates).contains(n)) {
        if !order.contains(&(index - 1)) {
            order.push(index - 1);
        }
    }
    if order.is_empty() {
        return None;
    }
    let rest: Vec<usize> = (0..candidates).filter(|i| !order.contains(i)).collect();
    order.extend(rest);
    Some(order)
}

impl Service {
    /// The reranker's model, when one is configured.
    pub fn reranker(&self) -> Option<(&str, usize)> {
        self.search.rerank.as_deref().map(|model| (model, self.search.rerank_candidates))
    }

    /// Reorders `candidates` for `query` with the configured model, as `principal`'s
    /// model call. `Err` says why the ranking was left as it was.
    pub async fn rerank(
        &self,
        principal: &Arc<Principal>,
        query: &str,
        candidates: &[Candidate<'_>],
    ) -> Result<Reranked, String> {
        let Some(model) = self.search.rerank.as_deref() else { return Err("no reranker is configured".into()) };
        let mut listing = format!("Request: {query}\n\nTools:\n");
        for (i, candidate) in candidates.iter().enumerate() {
            let description: String = candidate.description.chars().take(300).collect();
            listing.push_str(&format!("{}. {}: {}\n", i + 1, candidate.name, description.replace('\n', " ")));
        }
        let request = serde_json::json!({
            "model": model,
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": listing},
            ],
            "max_tokens": 200,
            "temperature": 0,
        });
        let ctx = CallContext {
            principal: principal.clone(),
            capabilities: self.policies.current().capabilities(principal),
            execution_id: None,
            trace: opentelemetry::Context::current(),
            agent_session: None,
        };
        let answer = match tokio::time::timeout(self.search.rerank_timeout, self.gateway.chat(ctx, request)).await {
            Err(_) => {
                return Err(format!("the reranker did not answer within {} ms", self.search.rerank_timeout.as_millis()))
            }
            Ok(Err(error)) => return Err(format!("the reranker's call failed: {error}")),
            Ok(Ok(answer)) => answer,
        };
        let order = order_from(&answer.content, candidates.len())
            .ok_or_else(|| format!("the reranker ({}) named no candidate", answer.model))?;
        Ok(Reranked { order, model: answer.model })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_come_from_the_numbers_the_model_names() {
        assert_eq!(order_from("{\"ranking\": [3, 1]}", 4), Some(vec![2, 0, 1, 3]));
        assert_eq!(order_from("2, 2, 9, 0, 1", 3), Some(vec![1, 0, 2]), "repeats and strays are ignored");
        assert_eq!(order_from("none fit", 3), None);
        assert_eq!(order_from("[12345]", 3), None);
    }
}
