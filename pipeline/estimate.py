"""`--dry_run`: what a real run of the command would send, from the inputs' count and bytes."""
import math

BASE64_GROWTH = 4 / 3


def estimate(images: int, sized_bytes: int, unsized: int, max_instances: int,
             max_request_bytes: int, qps: float, concurrency: int, processes: int) -> dict:
    """Requests at the current caps and a time estimate (a lower bound where sizes are
    unknown: base64 makes a body ~4/3 of the image bytes)."""
    by_count = math.ceil(images / max_instances) if images else 0
    by_bytes = math.ceil(sized_bytes * BASE64_GROWTH / max_request_bytes) if sized_bytes else 0
    requests = max(by_count, by_bytes)
    return {
        "images": images,
        "image_bytes": sized_bytes,
        "images_of_unknown_size": unsized,
        "requests": requests,
        "requests_in_flight": concurrency * processes,
        "estimated_s_at_qps": round(requests / qps, 1) if qps else None,
    }


def estimate_line(result: dict) -> str:
    requests = result["requests"]
    line = (f"dry run: {result['images']} images, about {requests} "
            f"request{'' if requests == 1 else 's'} at the current caps, sending nothing")
    seconds = result["estimated_s_at_qps"]
    if seconds is not None:
        line += f"; at --qps about {seconds:.1f} s" if seconds < 10 else \
            f"; at --qps about {seconds:.0f} s"
    else:
        rounds = math.ceil(requests / result["requests_in_flight"])
        line += (f"; no --qps: {result['requests_in_flight']} requests in flight, so about "
                 f"{rounds} x the endpoint's latency")
    return line
