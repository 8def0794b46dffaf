<?php
/**
 * Dashboard tokens: HS256 JSON Web Tokens, minted with hash_hmac (no library needed).
 *
 * Pure functions, no WordPress calls, so tests can run them with the PHP CLI:
 *   php -r 'define("ABSPATH", "/"); require "includes/jwt.php";
 *           echo provisioner_dashboard_mint_token("a@example.com", "1", "provisioner-dashboard", "secret", time(), 900);'
 *
 * The Python API (dashboard_api/tokens.py) accepts what this makes: claims email, sub (the
 * WordPress user id, as a string), aud, iat and exp, with exp at most one hour after iat.
 *
 * @package ProvisionerDashboard
 */

if ( ! defined( 'ABSPATH' ) ) {
	exit;
}

/** The longest a token may live; the API refuses longer-lived tokens. */
const PROVISIONER_DASHBOARD_MAX_TTL = 3600;

/**
 * Base64url without padding (RFC 7515, section 2).
 *
 * @param string $data Raw bytes.
 * @return string
 */
function provisioner_dashboard_b64url( $data ) {
	return rtrim( strtr( base64_encode( $data ), '+/', '-_' ), '=' );
}

/**
 * A signed dashboard token for one WordPress user.
 *
 * @param string $email    The user's email (scopes every API request).
 * @param string $user_id  The WordPress user id.
 * @param string $audience Must equal the API's api.jwt_audience.
 * @param string $secret   The shared secret (PROVISIONER_JWT_SECRET in wp-config.php).
 * @param int    $now      Unix time of issue.
 * @param int    $ttl      Seconds the token lives (1 to 3600).
 * @return string
 */
function provisioner_dashboard_mint_token( $email, $user_id, $audience, $secret, $now, $ttl ) {
	$ttl    = max( 1, min( (int) $ttl, PROVISIONER_DASHBOARD_MAX_TTL ) );
	$now    = (int) $now;
	$header = array(
		'alg' => 'HS256',
		'typ' => 'JWT',
	);
	$claims = array(
		'email' => (string) $email,
		'sub'   => (string) $user_id,
		'aud'   => (string) $audience,
		'iat'   => $now,
		'exp'   => $now + $ttl,
	);
	$flags   = JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE;
	$signing = provisioner_dashboard_b64url( json_encode( $header, $flags ) ) . '.'
		. provisioner_dashboard_b64url( json_encode( $claims, $flags ) );
	$sig     = hash_hmac( 'sha256', $signing, (string) $secret, true );
	return $signing . '.' . provisioner_dashboard_b64url( $sig );
}
