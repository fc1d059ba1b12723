"""The official openai Python client against Warden, unchanged: a whole
answer, a streamed one with usage, the model list and a 404, printed as
one JSON line for tests/openai_clients.rs."""
import json
import os

import openai

client = openai.OpenAI(base_url=os.environ["WARDEN_BASE"] + "/v1", api_key=os.environ["WARDEN_TOKEN"], max_retries=0)
model = os.environ["WARDEN_MODEL"]
messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
out = {}
r = client.chat.completions.create(model=model, messages=messages)
out["whole"] = r.choices[0].message.content
out["usage"] = r.usage.total_tokens
text, usage = "", None
for chunk in client.chat.completions.create(model=model, messages=messages, stream=True, stream_options={"include_usage": True}):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage.total_tokens
out["streamed"] = text
out["stream_usage"] = usage
out["models"] = [m.id for m in client.models.list()]
try:
    client.chat.completions.create(model="none-such", messages=messages)
except openai.NotFoundError as e:
    out["not_found"] = e.status_code
try:
    client.chat.completions.create(model=model, messages=[])
except openai.BadRequestError as e:
    out["bad_request"] = e.status_code
print(json.dumps(out))
