#!/bin/bash
# LocalStack ready hook (docker-compose.yml mounts it into /etc/localstack/init/ready.d): create the engine's queues.
set -euo pipefail
awslocal sqs create-queue --queue-name login-queue
awslocal sqs create-queue --queue-name purchase-queue
