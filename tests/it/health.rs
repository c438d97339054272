//! What health checkers, Kubernetes probes and `grpcurl` see: the standard
//! gRPC health service, `/readyz` and `/healthz`, and server reflection.

use futures_util::StreamExt;
use prost::Message as _;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

const ROUTES: &str = "
shutdown_grace: 30s
upstreams:
  sim: { kind: sim }
routes:
  - model: health-model
    pools: [{ upstream: sim }]
";

/// The service name clients of the gateway ask the health service about.
const LLM_SERVICE: &str = "llm.v1.LLMService";

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_string(),
    }
}

#[tokio::test]
async fn health_is_serving_once_loaded_and_turns_not_serving_when_shutdown_begins() {
    let mut gateway = Gateway::start_with_admin(ROUTES).await;
    let mut health = HealthClient::new(gateway.channel().await);
    for service in ["", LLM_SERVICE] {
        let status = health
            .check(check(service))
            .await
            .expect("check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health
        .check(check("no.such.Service"))
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(gateway.admin_get("/readyz").await.status, 200);

    // A watch is a call in flight, so it keeps running while the gateway
    // drains and sees the status change as a load balancer would.
    let mut watch = health
        .watch(check(LLM_SERVICE))
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("a status").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);

    gateway.begin_shutdown();
    let next = watch.next().await.expect("a new status").expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // Kubernetes stops routing to the pod while its calls drain; it is not
    // restarted for it.
    let readyz = gateway.admin_get("/readyz").await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    assert_eq!(gateway.admin_get("/healthz").await.status, 200);

    drop(watch);
    drop(health);
    gateway
        .stopped()
        .await
        .expect("clean exit once the watch ends");
}

#[tokio::test]
async fn reflection_lists_and_describes_the_llm_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let gateway = Gateway::start(ROUTES).await;
    let mut client = ServerReflectionClient::new(gateway.channel().await);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = [
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(LLM_SERVICE.into())),
    ];
    let answers: Vec<ServerReflectionResponse> = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection stream")
        .into_inner()
        .map(|answer| answer.expect("answer"))
        .collect()
        .await;
    assert_eq!(answers.len(), 2);

    // `grpcurl list`
    let Some(MessageResponse::ListServicesResponse(list)) = &answers[0].message_response else {
        panic!("not a service list: {:?}", answers[0]);
    };
    let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        LLM_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(services.contains(&expected), "{expected} in {services:?}");
    }

    // `grpcurl describe llm.v1.LLMService`
    let Some(MessageResponse::FileDescriptorResponse(files)) = &answers[1].message_response else {
        panic!("not a file descriptor: {:?}", answers[1]);
    };
    let service = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).expect("decode"))
        .filter(|file| file.package() == "llm.v1")
        .flat_map(|file| file.service)
        .find(|service| service.name() == "LLMService")
        .expect("the LLMService descriptor");
    let methods: Vec<(&str, bool)> = service
        .method
        .iter()
        .map(|m| (m.name(), m.server_streaming()))
        .collect();
    assert_eq!(
        methods,
        [
            ("Complete", false),
            ("CompleteStream", true),
            ("ListModels", false),
            ("Embed", false)
        ]
    );
}

#[tokio::test]
async fn reflection_v1alpha_answers_older_grpcurl_builds() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let gateway = Gateway::start(ROUTES).await;
    let mut client = ServerReflectionClient::new(gateway.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let answer = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection stream")
        .into_inner()
        .next()
        .await
        .expect("an answer")
        .expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    assert!(
        list.service.iter().any(|s| s.name == LLM_SERVICE),
        "{list:?}"
    );
}
