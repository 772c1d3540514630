//! Where messages go. A [`Route`] names a destination independently of the
//! transport; [`Route::name`] is the queue or routing key used on RabbitMQ.

use crate::message::JobId;

/// How a route delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    /// A work queue: each message goes to exactly one consumer, which must
    /// acknowledge it; unacknowledged messages are delivered again.
    Queue,
    /// Publish/subscribe: each message goes to every current subscriber.
    Broadcast,
}

/// A destination for messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// `kiln.jobs`: job submissions and cancellations for the coordinator.
    Jobs,
    /// `kiln.eval`: evaluation requests for evaluator workers.
    Eval,
    /// `kiln.drvs`: the derivation stream, roots and evaluation ends.
    Derivations,
    /// `kiln.ifd`: IFD requests; the coordinator serves this queue first.
    Ifd,
    /// `kiln.ifd-reply.<job>`: IFD answers for the evaluator of one job.
    IfdReply(JobId),
    /// `kiln.build.<system>.<features>`: build requests. `features` is the
    /// sorted set of `requiredSystemFeatures` joined by `+`, or `-` when
    /// empty; a builder consumes the queues of every subset of its features.
    Build {
        system: String,
        features: Vec<String>,
    },
    /// `kiln.build-control`: build cancellations, seen by every builder.
    BuildControl,
    /// `kiln.eval-control`: evaluation cancellations, seen by every
    /// evaluator.
    EvalControl,
    /// `kiln.build-events`: started, log, NAR chunks and results from builders.
    BuildEvents,
    /// `kiln.events.<job>`: the per-job event stream for front ends.
    JobEvents(JobId),
    /// `kiln.heartbeats`: builder heartbeats.
    Heartbeats,
    /// `kiln.reply.<id>`: the answer to one query (`kiln status`, `kiln
    /// jobs`), seen by the client that asked.
    Reply(uuid::Uuid),
}

impl Route {
    /// The build route for `system` with its features in canonical order.
    pub fn build(system: &str, features: &[String]) -> Route {
        let mut features = features.to_vec();
        features.sort();
        features.dedup();
        Route::Build {
            system: system.to_string(),
            features,
        }
    }

    /// The route of IFD answers for one evaluation attempt of a job (see
    /// [`crate::JobSpec::attempt`]): per attempt, so a restarted evaluation
    /// never competes for answers with the one it replaces.
    pub fn ifd_reply(job_id: JobId, attempt: uuid::Uuid) -> Route {
        Route::IfdReply(if attempt.is_nil() { job_id } else { attempt })
    }

    /// The queue or routing-key name.
    pub fn name(&self) -> String {
        match self {
            Route::Jobs => "kiln.jobs".into(),
            Route::Eval => "kiln.eval".into(),
            Route::Derivations => "kiln.drvs".into(),
            Route::Ifd => "kiln.ifd".into(),
            Route::IfdReply(job) => format!("kiln.ifd-reply.{job}"),
            Route::Build { system, features } => {
                let mut f = features.clone();
                f.sort();
                f.dedup();
                let f = if f.is_empty() {
                    "-".to_string()
                } else {
                    f.join("+")
                };
                format!("kiln.build.{system}.{f}")
            }
            Route::BuildControl => "kiln.build-control".into(),
            Route::EvalControl => "kiln.eval-control".into(),
            Route::BuildEvents => "kiln.build-events".into(),
            Route::JobEvents(job) => format!("kiln.events.{job}"),
            Route::Heartbeats => "kiln.heartbeats".into(),
            Route::Reply(id) => format!("kiln.reply.{id}"),
        }
    }

    /// Routes that exist for one job only: their queues go away when their
    /// consumer does (auto-delete queues on a broker).
    pub fn is_per_job(&self) -> bool {
        matches!(
            self,
            Route::IfdReply(_) | Route::JobEvents(_) | Route::Reply(_)
        )
    }

    /// Whether the route is a work queue or a broadcast.
    pub fn fanout(&self) -> Fanout {
        match self {
            Route::JobEvents(_)
            | Route::Heartbeats
            | Route::BuildControl
            | Route::EvalControl
            | Route::Reply(_) => Fanout::Broadcast,
            _ => Fanout::Queue,
        }
    }

    /// The build queues a builder with `features` serves for `system`: one per
    /// subset of its features (features are few, so this stays small).
    pub fn build_routes_for(system: &str, features: &[String]) -> Vec<Route> {
        let mut feats: Vec<String> = features.to_vec();
        feats.sort();
        feats.dedup();
        let n = feats.len().min(8);
        (0u32..(1 << n))
            .map(|mask| Route::Build {
                system: system.to_string(),
                features: (0..n)
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| feats[i].clone())
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_route_names_are_canonical() {
        let a = Route::build(
            "x86_64-linux",
            &["kvm".into(), "big-parallel".into(), "kvm".into()],
        );
        assert_eq!(a.name(), "kiln.build.x86_64-linux.big-parallel+kvm");
        let none = Route::Build {
            system: "x86_64-linux".into(),
            features: vec![],
        };
        assert_eq!(none.name(), "kiln.build.x86_64-linux.-");
        let served =
            Route::build_routes_for("x86_64-linux", &["kvm".into(), "big-parallel".into()]);
        assert_eq!(served.len(), 4);
        assert!(served.contains(&a) && served.contains(&none));
    }
}
